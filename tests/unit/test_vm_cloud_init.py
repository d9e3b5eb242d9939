"""``flowrig vm cloud-init`` and the replay plans of ``flowrig vm run-local`` (no cloud, no Docker).

What a VM of ``ec2``, ``azure`` or ``gcp`` gets at boot is rendered from the project's
flowrig.toml exactly as a run would send it: parsed back, compared with the script's
``docker run`` line, scanned for key material in baked and per-run mode, and its bad
inputs refused with one line and exit 2 before anything is asked of anyone.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flowrig.backends import get_backend
from flowrig.backends.vm import cloudinit, launcher
from flowrig.backends.vm import run_local as replay
from flowrig.certs import TLSMaterial
from flowrig.certs.delivery import encode
from flowrig.certs.scan import private_keys_in_bytes
from flowrig.cli import app
from flowrig.errors import BadInput
from tests.run_support import invoke

SEED_FLOW = Path(__file__).resolve().parents[2] / "examples" / "seed" / "flow.py"
BACKENDS = ("azure", "ec2", "gcp")
#: An image in each backend's private registry.
PRIVATE_IMAGES = {
    "ec2": ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/seed:1", "ecr"),
    "azure": ("flowrigtest.azurecr.io/seed:1", "acr"),
    "gcp": ("europe-west1-docker.pkg.dev/proj/repo/seed:1", "gar"),
}
PUBLIC_IMAGE = "ghcr.io/example/seed:1"


def make_project(root: Path, options: str = "", cluster: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "flow.py").write_text(SEED_FLOW.read_text())
    (root / "flowrig.toml").write_text(
        'flow = "flow.py:dask_cloud_provider_test"\n'
        f"[cluster]\n{textwrap.dedent(cluster)}\n"
        f"[cluster.options]\n{textwrap.dedent(options)}\n"
    )
    return root


def cloud_init(project: Path, *args: str, env: dict | None = None) -> list[str]:
    """The documents ``flowrig vm cloud-init`` prints for ``project``."""
    result = CliRunner().invoke(app, ["vm", "cloud-init", "--project", str(project), *args], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return replay.split_documents(result.stdout)


def script_of(text: str) -> str:
    [entry] = [f for f in yaml.safe_load(text)["write_files"] if f["path"] == cloudinit.SCRIPT_FILE]
    return entry["content"]


def flowrig_exit(args: list[str], cwd: Path) -> tuple[int, list[str]]:
    env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # no engine may be asked
    done = invoke(*args, cwd=cwd, env=env)
    return done.returncode, done.stderr.strip().splitlines()


# --- rendering ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_both_roles_render_parse_back_and_run_the_line_the_role_says(tmp_path, backend):
    project = make_project(tmp_path / "p", options="""
        env_vars = { GREETING = "hello", LEVEL = 3 }
        worker_extra_args = ["--nworkers", "1"]
        scheduler_extra_args = ["--port", "8999"]
        """, cluster="worker_threads = 2\nno_client_timeout = 90")
    documents = cloud_init(project, "--backend", backend, "--image", "seed:1",
                           "--scheduler-address", "tls://10.0.0.5:8999",
                           env={"FLOWRIG_RUN_ID": "abc123", "PREFECT_API_URL": "http://10.0.0.2:4200/api"})
    scheduler, worker = (cloudinit.parse(text) for text in documents)
    assert (scheduler.role, worker.role) == ("scheduler", "worker")
    assert scheduler.run_id == worker.run_id == "abc123"
    assert scheduler.name == "flowrig-abc123-scheduler" and worker.name == "flowrig-abc123-worker-1"
    assert scheduler.command == ("scheduler", "--no-dashboard", "--no-client-timeout", "90", "--port", "8999")
    assert worker.command[:6] == ("worker", "tls://10.0.0.5:8999", "--name", worker.name, "--nthreads", "2")
    assert worker.command[-2:] == ("--nworkers", "1")
    # The workers' environment is the run's and the project's; the scheduler runs no task.
    assert worker.environment["GREETING"] == "hello" and worker.environment["LEVEL"] == "3"
    assert worker.environment["PREFECT_API_URL"] == "http://10.0.0.2:4200/api"
    assert worker.environment["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert scheduler.environment == {}
    expected_source = get_backend(backend).secret_source
    assert scheduler.tls.source == worker.tls.source == expected_source
    for role, text in zip((scheduler, worker), documents):
        # Round trip: what is rendered is what parses back, and renders the same again.
        assert cloudinit.render(cloudinit.parse(text)) == text
        line = [item for item in script_of(text).splitlines() if item.startswith("exec ")]
        assert line == ["exec " + shlex.join([*cloudinit.container_arguments(role), role.image, *role.command])]


def test_output_dir_writes_one_file_per_role_and_role_picks_one(tmp_path):
    project = make_project(tmp_path / "p")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["vm", "cloud-init", "--project", str(project), "--backend", "gcp",
                                      "--image", "seed:1", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["scheduler.yaml", "worker.yaml"]
    assert cloudinit.parse((out / "scheduler.yaml").read_text()).role == "scheduler"
    assert cloudinit.parse((out / "worker.yaml").read_text()).role == "worker"
    [only] = cloud_init(project, "--backend", "azure", "--image", "seed:1", "--role", "worker")
    assert cloudinit.parse(only).role == "worker"
    # The project's own backend and image when none is given.
    own = make_project(tmp_path / "own", cluster='backend = "ec2"\nimage = "seed:2"')
    [scheduler, _] = cloud_init(own)
    assert cloudinit.parse(scheduler).image == "seed:2"


def test_a_project_that_joins_a_running_scheduler_renders_the_worker_only(tmp_path):
    project = make_project(tmp_path / "p", options='scheduler_address = "tls://10.1.2.3:8786"')
    [only] = cloud_init(project, "--backend", "ec2", "--image", "seed:1")
    worker = cloudinit.parse(only)
    assert worker.role == "worker" and worker.command[1] == "tls://10.1.2.3:8786"
    code, lines = flowrig_exit(["vm", "cloud-init", "--project", str(project), "--backend", "ec2",
                                "--image", "seed:1", "--role", "scheduler"], tmp_path)
    assert code == 2 and len(lines) == 1 and "pass --role worker" in lines[0], lines


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tls", ["baked", "per-run"])
def test_no_private_key_in_any_user_data(tmp_path, backend, tls):
    project = make_project(tmp_path / "p", options=f'tls = "{tls}"')
    for text in cloud_init(project, "--backend", backend, "--image", PRIVATE_IMAGES[backend][0]):
        assert list(private_keys_in_bytes(text.encode())) == []
        role = cloudinit.parse(text)
        assert role.tls.source == ("baked" if tls == "baked" else get_backend(backend).secret_source)
        assert (role.tls.ref is None) == (tls == "baked")


def test_the_scan_before_creation_catches_a_key_in_user_data():
    # The control of the test above: a key under a harmless name is found and refused.
    key = TLSMaterial.ephemeral().key_pem.decode()
    role = cloudinit.VMRole(run_id="r1", role="worker", name="flowrig-r1-worker-1", image="seed:1",
                            command=("worker",), environment={"NOTE": key})
    assert list(private_keys_in_bytes(cloudinit.render(role).encode()))
    with pytest.raises(BadInput, match="holds a private key"):
        launcher.user_data(role)
    # ... in the delivered line's JSON form too.
    role = role.model_copy(update={"environment": {"NOTE": encode(TLSMaterial.ephemeral()).decode()}})
    with pytest.raises(BadInput, match="holds a private key"):
        launcher.user_data(role)


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_login_only_for_the_clouds_own_registry(tmp_path, backend):
    project = make_project(tmp_path / "p")
    image, kind = PRIVATE_IMAGES[backend]
    for text in cloud_init(project, "--backend", backend, "--image", image):
        role = cloudinit.parse(text)
        assert role.registry == cloudinit.RegistryLogin(kind=kind, host=image.split("/")[0])
        assert f"--password-stdin {image.split('/')[0]}" in script_of(text)
    others = [PUBLIC_IMAGE, "seed:1"] + [i for b, (i, _) in PRIVATE_IMAGES.items() if b != backend]
    for other in others:
        for text in cloud_init(project, "--backend", backend, "--image", other):
            assert cloudinit.parse(text).registry is None
            assert "docker login" not in script_of(text)
    # registry_login = false leaves it out even for the cloud's own registry.
    off = make_project(tmp_path / "off", options="registry_login = false")
    for text in cloud_init(off, "--backend", backend, "--image", image):
        assert "docker login" not in script_of(text)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bootstrap_false_renders_no_install(tmp_path, backend):
    installs = ("apt-get", "dnf install", "yum install")
    [default, _] = cloud_init(make_project(tmp_path / "on"), "--backend", backend, "--image", "seed:1")
    assert all(word in script_of(default) for word in installs)
    for text in cloud_init(make_project(tmp_path / "off", options="bootstrap = false"),
                           "--backend", backend, "--image", "seed:1"):
        script = script_of(text)
        assert not any(word in script for word in installs)
        assert "command -v docker" in script and "bootstrap = false" in script
        assert cloudinit.parse(text).install_docker is False


@pytest.mark.parametrize("name", ["DB_PASSWORD", "API_TOKEN", "AWS_SECRET_ACCESS_KEY", "MY_CREDENTIALS"])
def test_secret_looking_env_vars_are_refused(name):
    for backend in BACKENDS:
        with pytest.raises(BadInput) as info:
            get_backend(backend).options({"env_vars": {name: "x"}})
        assert name in str(info.value) and "secret store" in str(info.value)


@pytest.mark.parametrize(
    "options, args, words",
    [
        ("", ["--backend", "docker"], "backend 'docker' runs no VMs: pass --backend azure|ec2|gcp"),
        ("", ["--backend", "nope"], "backend 'nope' runs no VMs"),
        ("", [], "backend 'local' runs no VMs"),
        ('region = "EU west"', ["--backend", "ec2"], "region = 'EU west' is not a region"),
        ('availability_zone = "eu-west-1"', ["--backend", "ec2"], "is not a availability zone"),
        ('zone = "europe-west1"', ["--backend", "gcp"], "zone = 'europe-west1' is not a zone"),
        ('location = "West Europe"', ["--backend", "azure"], "location = 'West Europe' is not a location"),
        ("instance_typo = 1", ["--backend", "ec2"], "instance_typo not known to the ec2 backend"),
        ("bootstrap = 1", ["--backend", "gcp"], "bootstrap must be true or false"),
        ("docker_image = 'x'", ["--backend", "azure"], "pass the image with --image"),
        ('env_vars = { SERVICE_TOKEN = "x" }', ["--backend", "ec2"], "SERVICE_TOKEN"),
        ("", ["--backend", "ec2", "--scheduler-address", "10.0.0.1:8786"], "must be tls://HOST:PORT"),
        ("", ["--backend", "ec2", "--image", ""], "no image to render"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, options, args, words):
    project = make_project(tmp_path / "p", options=options)
    image = [] if "--image" in args else ["--image", "seed:1"]
    code, lines = flowrig_exit(["vm", "cloud-init", "--project", str(project), *image, *args], tmp_path)
    assert code == 2, lines
    assert len(lines) == 1 and words in lines[0], lines


# --- the replay's plans ---------------------------------------------------------------
def _spec(options: dict):
    from flowrig.backends.base import ClusterSpec
    from flowrig.project.sizing import ClusterSize

    return ClusterSpec(run_id="r9", size=ClusterSize(1), tls=None, image="seed:1", options=options)


def roles(backend: str = "ec2", tls: str = "per-run") -> tuple[cloudinit.VMRole, cloudinit.VMRole]:
    options = {"tls": tls, "env_vars": {"GREETING": "hello"}}
    return get_backend(backend).preview(_spec(options), scheduler_address="tls://127.0.0.1:8786",
                                        secret_ref="arn:aws:secretsmanager:eu-west-1:123456789012:secret:run")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_local_container_is_the_vms_docker_run_line(backend):
    scheduler, worker = roles(backend)
    for role in (scheduler, worker):
        plan = replay.vm_container_plan(role)
        assert plan.name == role.container_name and plan.network == "host"
        assert plan.image == role.image and plan.command == role.command
        assert plan.read_only and plan.tmpfs == {"/tmp": "rw,nosuid,nodev,noexec"}
        assert plan.shm_size == cloudinit.SHM_SIZE
        assert plan.cap_drop == ("ALL",) and plan.security_opt == ("no-new-privileges:true",)
        assert plan.pids_limit == cloudinit.PIDS_LIMIT[role.role]
        assert plan.labels == {"flowrig.run-id": "r9", "flowrig.role": role.role}
        assert plan.environment["FLOWRIG_TLS_FROM"] == get_backend(backend).secret_source
        assert plan.environment["PREFECT_HOME"] == cloudinit.PREFECT_HOME
    assert replay.vm_container_plan(worker).environment["GREETING"] == "hello"


def test_replay_delivers_per_run_certificates_on_stdin_and_keeps_baked_ones():
    scheduler, worker = roles("gcp")
    [s, w] = replay.plan_replay([("s.yaml", scheduler), ("w.yaml", worker)], have_certs=True)
    for item, role in ((s, scheduler), (w, worker)):
        assert item.delivers_certificates and item.plan.stdin_open
        assert item.plan.environment["FLOWRIG_TLS_FROM"] == "stdin"
        assert "FLOWRIG_TLS_SECRET_REF" not in item.plan.environment
        # Named after its VM (roles share one engine here), on the host's network.
        assert item.plan.name == role.name and item.plan.network == "host"
        assert item.plan.hostname is None and item.plan.aliases == ()
        # Everything else is the VM's.
        vm = replay.vm_container_plan(role)
        assert (item.plan.read_only, item.plan.cap_drop, item.plan.pids_limit) == (vm.read_only, vm.cap_drop,
                                                                                    vm.pids_limit)
        assert {k: v for k, v in vm.environment.items() if not k.startswith("FLOWRIG_TLS")} == {
            k: v for k, v in item.plan.environment.items() if not k.startswith("FLOWRIG_TLS")}
    [named] = replay.plan_replay([("w.yaml", worker)], network="meet", have_certs=True)
    assert named.plan.network == "meet" and named.plan.aliases == (worker.name,)
    baked_s, baked_w = roles("gcp", tls="baked")
    [b] = replay.plan_replay([("b.yaml", baked_w)], have_certs=False)
    assert not b.delivers_certificates and not b.plan.stdin_open
    assert "FLOWRIG_TLS_FROM" not in b.plan.environment


def test_replay_refuses_what_it_cannot_replay():
    scheduler, worker = roles("azure")
    with pytest.raises(BadInput, match=r"reads its certificates from azure-keyvault.*pass --certs DIR"):
        replay.plan_replay([("w.yaml", worker)], have_certs=False)
    with pytest.raises(BadInput, match="both hold the worker VM"):
        replay.plan_replay([("a.yaml", worker), ("b.yaml", worker)], have_certs=True)
    _, baked = roles("azure", tls="baked")
    with pytest.raises(BadInput, match="leave --certs out"):
        replay.plan_replay([("b.yaml", baked)], have_certs=True)


def test_documents_split_from_one_stream_and_bad_files_are_named(tmp_path):
    scheduler, worker = roles("ec2")
    both = cloudinit.render(scheduler) + "\n" + cloudinit.render(worker)
    found = replay.load_roles({"both.yaml": both})
    assert [(source, role.name) for source, role in found] == [("both.yaml", scheduler.name),
                                                              ("both.yaml", worker.name)]
    with pytest.raises(BadInput, match="x.yaml: this is not cloud-config"):
        replay.load_roles({"x.yaml": "hello: 1\n"})
    with pytest.raises(BadInput, match="e.yaml is empty"):
        replay.load_roles({"e.yaml": "\n"})
    foreign = "#cloud-config\nruncmd: [[echo, hi]]\n"
    with pytest.raises(BadInput, match="holds no /etc/flowrig/role.json"):
        replay.load_roles({"f.yaml": foreign})
    tampered = cloudinit.render(worker).replace('"role": "worker"', '"role": "runner"')
    with pytest.raises(BadInput, match="is not a flowrig role"):
        replay.load_roles({"t.yaml": tampered})


def test_run_local_bad_input_exits_2_with_one_line_before_any_engine(tmp_path):
    scheduler, worker = roles("ec2")
    (tmp_path / "worker.yaml").write_text(cloudinit.render(worker))
    (tmp_path / "note.txt").write_text("not cloud-init\n")
    cases = [
        (["worker.yaml"], "pass --certs DIR"),
        (["missing.yaml"], "cannot read missing.yaml"),
        (["note.txt"], "note.txt: this is not cloud-config"),
        (["worker.yaml", "--certs", "nowhere"], "nowhere"),
    ]
    for args, words in cases:
        code, lines = flowrig_exit(["vm", "run-local", *args], tmp_path)
        assert code == 2, (args, lines)
        assert len(lines) == 1 and words in lines[0], (args, lines)


def test_the_role_file_is_plain_json_of_the_role():
    _, worker = roles("ec2")
    [entry] = [f for f in yaml.safe_load(cloudinit.render(worker))["write_files"] if f["path"] == cloudinit.ROLE_FILE]
    assert cloudinit.VMRole.model_validate(json.loads(entry["content"])) == worker




# --- worker groups ---------------------------------------------------------------------
GROUPS = """
[[cluster.worker_groups]]
name = "cpu"
n_workers = 2

[[cluster.worker_groups]]
name = "gpu"
gpu = 2
market = "on-demand"
options = { {gpu_options} }
"""
GROUP_OPTIONS = {
    "gcp": ('spot = "fallback"\ngpu_source_image = "projects/p/global/images/family/cuda"',
            'worker_machine_type = "n1-standard-4", accelerator_type = "nvidia-tesla-t4"'),
    "azure": ('spot = "fallback"\ngpu_vm_image = { publisher = "microsoft-dsvm", offer = "ubuntu-hpc", sku = "2204" }',
              'worker_vm_size = "Standard_NC12s_v3"'),
    "ec2": ('spot = "fallback"', 'worker_instance_type = "g5.2xlarge"'),
}
GROUP_LINES = {
    "gcp": ("worker group 'cpu': machine_type = 'n1-standard-1'; resources flowrig-group-cpu=1; GPUs none; market "
            "fallback (Spot first, on-demand where Spot has no room); boot image Ubuntu 24.04 LTS of its type's "
            "architecture",
            "worker group 'gpu': options.worker_machine_type = 'n1-standard-4'; resources flowrig-group-gpu=1,GPU=2; "
            "GPUs 2 (docker run --gpus all; accelerator_type = 'nvidia-tesla-t4'); market on-demand; boot image "
            "[cluster.options] gpu_source_image = 'projects/p/global/images/family/cuda'"),
    "azure": ("worker group 'cpu': vm_size = 'Standard_DS1_v2'; resources flowrig-group-cpu=1; GPUs none; market "
              "fallback (Spot first, on-demand where Spot has no room); boot image Ubuntu 24.04 LTS of its type's "
              "architecture",
              "worker group 'gpu': options.worker_vm_size = 'Standard_NC12s_v3'; resources flowrig-group-gpu=1,GPU=2; "
              "GPUs 2 (docker run --gpus all); market on-demand; boot image [cluster.options] gpu_vm_image = "
              "{'publisher': 'microsoft-dsvm', 'offer': 'ubuntu-hpc', 'sku': '2204'}"),
    "ec2": ("worker group 'cpu': instance_type = 't3.medium'; resources flowrig-group-cpu=1; GPUs none; market fallback "
            "(Spot first, on-demand where Spot has no room); boot image the run's AMI",
            "worker group 'gpu': options.worker_instance_type = 'g5.2xlarge'; resources flowrig-group-gpu=1,GPU=2; "
            "GPUs 2 (docker run --gpus all); market on-demand; boot image the run's AMI"),
}


def group_project(root: Path, backend: str) -> Path:
    options, gpu_options = GROUP_OPTIONS[backend]
    return make_project(root, options=options,
                        cluster=f'backend = "{backend}"\nimage = "seed:1"' + GROUPS.replace("{gpu_options}", gpu_options))


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_groups_worker_is_shown_with_its_type_resources_gpus_market_and_boot_image(tmp_path, backend):
    project = group_project(tmp_path / "p", backend)
    run = {"FLOWRIG_RUN_ID": "grp1"}
    documents = cloud_init(project, env=run)
    scheduler, cpu, gpu = (cloudinit.parse(text) for text in documents)
    assert scheduler.role == "scheduler" and (cpu.role, gpu.role) == ("worker", "worker")
    assert cpu.name.endswith("-worker-cpu-1") and gpu.name.endswith("-worker-gpu-1")
    # Each group's own resources and GPUs; a Spot-first group's worker watches for the notice.
    assert cpu.command[-2:] == ("--resources", "flowrig-group-cpu=1") and not cpu.gpus
    assert gpu.command[-2:] == ("--resources", "flowrig-group-gpu=1,GPU=2") and gpu.gpus
    assert cpu.environment.get("FLOWRIG_SPOT_NOTICE") == backend and "FLOWRIG_SPOT_NOTICE" not in gpu.environment
    # The line after #cloud-config says how each group's VMs start.
    lines = [text.splitlines()[1] for text in documents[1:]]
    expected = GROUP_LINES[backend]
    assert lines[0].startswith(f"# {expected[0]}"), lines[0]
    assert lines[1].startswith(f"# {expected[1]}"), lines[1]
    # --group shows that group's worker alone; run-local reads the files --output-dir writes.
    [only] = cloud_init(project, "--group", "gpu", "--role", "worker", env=run)
    assert only == documents[2]
    out = tmp_path / "out"
    cloud_init(project, "--output-dir", str(out), env=run)
    assert sorted(p.name for p in out.iterdir()) == ["scheduler.yaml", "worker-cpu.yaml", "worker-gpu.yaml"]
    texts = {str(path): path.read_text() for path in sorted(out.iterdir())}
    assert [role for _source, role in replay.load_roles(texts)] == [scheduler, cpu, gpu]


@pytest.mark.parametrize(("cluster", "args", "line"), [
    ("groups", ["--group", "nope"],
     "--group 'nope' is not a [[cluster.worker_groups]] group of the project: name one of cpu, gpu"),
    ("", ["--group", "gpu"], "--group 'gpu' is not a [[cluster.worker_groups]] group of the project: it has no "
                             "worker groups; drop --group"),
    ("groups", ["--group", "gpu", "--role", "scheduler"], "--group picks a worker group's worker: pass --role worker"),
    ('[[cluster.worker_groups]]\nname = "big"\noptions = { disk_size = 90 }', [],
     "[[cluster.worker_groups]] group 'big' options.disk_size is not taken per group by the azure backend"),
])
def test_a_bad_group_is_one_line_exit_2(tmp_path, cluster, args, line):
    if cluster == "groups":
        project = group_project(tmp_path / "p", "azure")
    else:
        project = make_project(tmp_path / "p", cluster='backend = "azure"\nimage = "seed:1"\n' + cluster)
    code, lines = flowrig_exit(["vm", "cloud-init", "--project", str(project), *args], tmp_path)
    assert code == 2, lines
    assert lines == [f"flowrig: error: {line}"] or (len(lines) == 1 and line in lines[0]), lines
