"""The `implicit` library's ALS on one machine, with exact (Cholesky) solves.

Objective: c_ui = alpha * r_ui (no +1), lambda_u = reg (unscaled). Exact solves
rather than implicit's default conjugate-gradient steps, so that folding a user
in against the final item factors reproduces the trained user vector.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from jobs.engines import AlsParams
from recsys.contracts.manifest import Objective
from recsys.evaluation.protocol import fit_implicit

NAME = "implicit"


def objective(params: AlsParams) -> Objective:
    return Objective(confidence="alpha_r", reg_scaling="none", alpha=params.alpha, reg=params.reg)


def fit(strengths: sp.csr_matrix, params: AlsParams, spark=None) -> tuple[np.ndarray, np.ndarray]:
    return fit_implicit(
        strengths, params.rank, params.reg, params.alpha, params.iterations, seed=params.seed, use_cg=False
    )
