"""The README's remedy tables, from the stores of configs/remedies.yaml and configs/remedies_lt.yaml.

    clphase run configs/remedies.yaml && clphase run configs/remedies_lt.yaml
    python docs/examples/remedies_table.py results/remedies.zarr results/remedies_lt.zarr [--readme]

Step (K_A + K_B classes) at R = 100: does the remedy keep the minorities apart there (R*(k) > 100, decided by
the optimality condition), and how far is the optimum from the simplex ETF (||G - G_ETF||_F / C)? Long tail
exp(C = 10) at rho = 100 (CIFAR-10-LT): the tail pair's cosine and the distance to the ETF.
"""

from __future__ import annotations

import sys

import numpy as np
import xarray as xr

from pipeline.analysis import etf_distance


def k_name(k: float) -> str:
    return "inf" if np.isinf(k) else f"{k:g}"


def step_table(path: str, R: float = 100.0) -> list[str]:
    ds = xr.open_zarr(path)
    ks = ds.k.values
    lines = []
    for n_major, n_minor in ((2, 2), (5, 5)):
        lines += ["", f"K_A + K_B = {n_major} + {n_minor}, R = {R:g}: R*(k) (merged at R = {R:g} where R* <= {R:g}), "
                  "and the optimum's distance to the simplex ETF at k = inf", "",
                  "| loss | remedy | " + " | ".join(f"R* at k = {k_name(k)}" for k in ks) + " | ETF distance |",
                  "|---" * (len(ks) + 3) + "|"]  # fmt: skip
        for loss in ds.loss.values:
            for remedy in ds.remedy.values:
                point = {"loss": loss, "remedy": remedy, "n_major": n_major, "n_minor": n_minor}
                cells = []
                for k in ks:
                    R_star = float(ds.R_threshold.sel({**point, "k": k}))
                    status = int(ds.status_threshold.sel({**point, "k": k}))
                    text = "> 1e12" if status == 9 else ("never" if np.isinf(R_star) else f"{R_star:.3g}")
                    cells.append(f"**{text}**" if R_star <= R else text)
                G = ds.gram_theory.sel({**point, "k": np.inf, "R": R}).values
                lines.append(f"| {loss} | {remedy} | " + " | ".join(cells) + f" | {etf_distance(G):.3f} |")
    return lines


def tail_table(path: str, rho: float = 100.0) -> list[str]:
    ds = xr.open_zarr(path)
    ks = ds.k.values
    lines = ["", f"exp(C = 10, rho = {rho:g}): the two smallest classes' cosine at each k, and the optimum's "
             "distance to the simplex ETF at k = inf", "",
             "| loss | remedy | " + " | ".join(f"cos at k = {k_name(k)}" for k in ks) + " | ETF distance |",
             "|---" * (len(ks) + 3) + "|"]  # fmt: skip
    for loss in ds.loss.values:
        for remedy in ds.remedy.values:
            point = {"loss": loss, "remedy": remedy, "C": 10, "rho": rho}
            cosines = [float(ds.cos_tail_theory.sel({**point, "k": k})) for k in ks]
            cells = [f"{c:.3f}" for c in cosines]
            G = ds.gram_theory.sel({**point, "k": np.inf}).values
            lines.append(f"| {loss} | {remedy} | " + " | ".join(cells) + f" | {etf_distance(G):.3f} |")
    return lines


def _R_star(ds: xr.Dataset, point: dict, R: float) -> str:
    R_star = float(ds.R_threshold.sel(point))
    text = "> 1e12" if int(ds.status_threshold.sel(point)) == 9 else ("never" if np.isinf(R_star) else f"{R_star:.3g}")
    return f"**{text}**" if R_star <= R else text


def readme_table(step_path: str, lt_path: str, loss: str = "infonce(tau=0.5)", at: float = 100.0) -> list[str]:
    """One row per remedy: R*(k) for 2 + 2 and 5 + 5 classes (bold: merged at R = 100), the distance of the 2 + 2
    optimum at R = 100 to the simplex ETF, and the CIFAR-10-LT tail pair's cosine (rho = 100)."""
    step, lt = xr.open_zarr(step_path), xr.open_zarr(lt_path)
    ks = step.k.values
    k_text = " / ".join(k_name(k) for k in ks)
    lines = [f"| remedy | R*, 2 + 2 (k = {k_text}) | R*, 5 + 5 | ETF distance, 2 + 2 at R = {at:g} (k = 16 / inf) | "
             f"CIFAR-10-LT tail cosine (k = 16 / inf) |", "|---|---|---|---|---|"]  # fmt: skip
    for remedy in step.remedy.values:
        cells = [" / ".join(_R_star(step, {"loss": loss, "remedy": remedy, "n_major": a, "n_minor": b, "k": k}, at)
                            for k in ks) for a, b in ((2, 2), (5, 5))]  # fmt: skip
        at_R = {"loss": loss, "remedy": remedy, "n_major": 2, "n_minor": 2, "R": at}
        etf = [etf_distance(step.gram_theory.sel({**at_R, "k": k}).values) for k in (ks[0], ks[-1])]
        tail = {"loss": loss, "remedy": remedy, "C": 10, "rho": at}
        cos = [float(lt.cos_tail_theory.sel({**tail, "k": k})) for k in (ks[0], ks[-1])]
        lines.append(f"| `{remedy}` | {cells[0]} | {cells[1]} | {etf[0]:.3f} / {etf[1]:.3f} | "
                     f"{cos[0]:.4f} / {cos[1]:.4f} |")  # fmt: skip
    return lines


if __name__ == "__main__":
    if "--readme" in sys.argv:
        print("\n".join(readme_table(sys.argv[1], sys.argv[2])))
    else:
        print("\n".join(step_table(sys.argv[1]) + tail_table(sys.argv[2])))
