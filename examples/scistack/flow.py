"""Matrix decompositions on the cluster, reduced with pandas, pyarrow and scikit-learn.

For each ``k`` a task builds ``M = k*I + J`` (``J`` the n-by-n matrix of ones), whose
eigenvalues are ``k + n`` once and ``k`` n-1 times, so every figure has a closed form:

- ``logdet = (n-1)*log(k) + log(k+n)``, from the LU factorisation (``scipy.linalg.lu``);
- the largest and smallest singular values ``k+n`` and ``k`` (``numpy.linalg.svd``);
- ``trace(M @ M) = (k+n)**2 + (n-1)*k**2``, a matrix product (BLAS gemm).

The reduction sums each figure over the parity of ``k`` (a pandas groupby), adds up the
``k`` with pyarrow, and fits ``smax`` against ``k`` with scikit-learn: slope 1,
intercept ``n``. The same groupby runs once more as a dask.dataframe on the run's own
cluster, from a task that opens a client to it (``prefect_dask.get_dask_client``).
"""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.linalg
from prefect import flow, task
from prefect_dask import get_dask_client
from sklearn.linear_model import LinearRegression

FIGURES = ["logdet", "smax", "smin", "trace_sq"]


@task
def decompose(k: int, n: int) -> dict[str, float]:
    matrix = k * np.eye(n) + np.ones((n, n))
    permutation, lower, upper = scipy.linalg.lu(matrix)
    if not np.allclose(permutation @ lower @ upper, matrix):
        raise ArithmeticError(f"LU factors of k={k} do not give the matrix back")
    singular = np.linalg.svd(matrix, compute_uv=False)
    return {
        "k": k,
        "parity": k % 2,
        "logdet": float(np.sum(np.log(np.abs(np.diag(upper))))),
        "smax": float(singular.max()),
        "smin": float(singular.min()),
        "trace_sq": float(np.trace(matrix @ matrix)),
    }


@task
def summarise(rows: list[dict[str, float]]) -> dict:
    frame = pd.DataFrame(rows)
    sums = frame.groupby("parity")[FIGURES].sum().round(6)
    table = pa.Table.from_pandas(frame)
    fit = LinearRegression().fit(frame[["k"]], frame["smax"])
    return {
        "by_parity": {str(parity): row.to_dict() for parity, row in sums.iterrows()},
        "k_total": pc.sum(table["k"]).as_py(),
        "smax_fit": {"slope": round(float(fit.coef_[0]), 6), "intercept": round(float(fit.intercept_), 6)},
    }


@task
def summarise_on_the_cluster(rows: list[dict[str, float]]) -> dict[str, float]:
    frame = dd.from_pandas(pd.DataFrame(rows), npartitions=3)
    with get_dask_client() as client:
        sums = client.compute(frame.groupby("parity")["trace_sq"].sum()).result()
    return {str(parity): round(float(total), 6) for parity, total in sums.items()}


@flow(name="scistack")
def scistack(ks: list[int], n: int = 300) -> dict:
    rows = decompose.map(ks, n=n)
    summary = summarise.submit(rows)
    on_the_cluster = summarise_on_the_cluster.submit(rows)
    return {**summary.result(), "trace_sq_on_the_cluster": on_the_cluster.result()}
