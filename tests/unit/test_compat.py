"""``DaskCloudProviderEnvironment``, the Prefect 1 style front end: how its arguments map to a
backend, options and TLS. Real runs on a local mutual-TLS cluster:
tests/e2e/local/test_compat.py.
"""

from __future__ import annotations

import pytest

from flowrig import DaskCloudProviderEnvironment
from flowrig.errors import BadInput

# --- arguments, no cluster -----------------------------------------------------------------


def test_cloud_provider_classes_map_to_backends():
    from dask_cloudprovider.aws import ECSCluster, FargateCluster

    assert DaskCloudProviderEnvironment(FargateCluster).backend == "fargate"
    assert DaskCloudProviderEnvironment(ECSCluster).backend == "ecs"


def test_other_cluster_classes_become_class_paths():
    from distributed import SpecCluster

    assert DaskCloudProviderEnvironment(SpecCluster).backend == "distributed.deploy.spec:SpecCluster"


def test_provider_class_of_wrong_kind():
    with pytest.raises(TypeError, match="provider_class"):
        DaskCloudProviderEnvironment(42)


@pytest.mark.parametrize(("lo", "hi"), [(0, None), (None, 3)])
def test_a_lone_adaptive_bound_is_bad_input(lo, hi):
    with pytest.raises(BadInput, match="adaptive_min_workers and adaptive_max_workers"):
        DaskCloudProviderEnvironment("local", adaptive_min_workers=lo, adaptive_max_workers=hi)


def test_arguments_are_kept():
    env = DaskCloudProviderEnvironment(
        "local", adaptive_min_workers=0, adaptive_max_workers=2, memory_limit="1GiB", min_workers=0, max_workers=4
    )
    assert env.adapt == (0, 2) and env.n_workers is None
    assert env.provider_kwargs == {"memory_limit": "1GiB"}
    assert (env.min_workers, env.max_workers) == (0, 4)
    fixed = DaskCloudProviderEnvironment("local", n_workers=3)
    assert fixed.n_workers == 3 and fixed.adapt is None and fixed.provider_kwargs == {}


def test_security_from_a_directory(tmp_path):
    from flowrig.certs import TLSMaterial, generate

    generate(tmp_path)
    env = DaskCloudProviderEnvironment("local", security=tmp_path)
    assert isinstance(env.tls, TLSMaterial)
    assert env.tls == TLSMaterial.from_dir(tmp_path)
    assert DaskCloudProviderEnvironment("local", security=str(tmp_path)).tls is not None
    with pytest.raises(TypeError, match="security"):
        DaskCloudProviderEnvironment("local", security=3)


