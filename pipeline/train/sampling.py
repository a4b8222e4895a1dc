"""Drawing negatives: categorical class tables sampled in O(1) per draw (Walker's alias method)."""

from __future__ import annotations

import numpy as np
import torch


class AliasSampler:
    """Rows drawn from categorical class tables in O(1) per draw (Walker's alias method, per row).

    ``torch.multinomial`` costs about as much as the rest of a training step at the reference shape.
    Here each class table is built once (Vose) and spread over the class's ``n`` rows, so a draw is
    a uniform row ``v``, one float64 uniform, and ``v`` kept or swapped for its alias (the same place
    in the alias class). float64, because minority classes at large R have probabilities far below
    float32's resolution of a uniform.

    Parameters
    ----------
    q : (T, C) class probabilities of each table (rows summing to 1).
    n : samples per class; row ``c n + i`` is sample i of class c.
    """

    def __init__(self, q: np.ndarray, n: int, device: torch.device) -> None:
        T, C = q.shape
        prob, alias = np.ones((T, C)), np.tile(np.arange(C), (T, 1))
        for t in range(T):  # Vose: pair each underfull column with an overfull class
            scaled = C * q[t] / q[t].sum()
            small = [c for c in range(C) if scaled[c] < 1]
            large = [c for c in range(C) if scaled[c] >= 1]
            while small and large:
                s, big = small.pop(), large[-1]
                prob[t, s], alias[t, s] = scaled[s], big
                scaled[big] -= 1 - scaled[s]
                if scaled[big] < 1:
                    small.append(large.pop())
        self.N = C * n
        place = np.arange(self.N) % n  # (N,)
        prob_row = np.repeat(prob, n, axis=1)  # (T, N)
        alias_row = np.repeat(alias, n, axis=1) * n + place  # (T, N)
        self.prob = torch.tensor(prob_row.reshape(-1), dtype=torch.float64, device=device)  # (T N,)
        self.alias = torch.tensor(alias_row.reshape(-1), device=device)  # (T N,)

    def sample(self, table: torch.Tensor, k: int) -> torch.Tensor:
        """k rows (..., k) for each entry of ``table`` (..., table indices), from that table."""
        shape = (*table.shape, k)
        v = torch.randint(self.N, shape, device=table.device)
        column = v + (table * self.N)[..., None]
        keep = torch.rand(shape, dtype=torch.float64, device=table.device) < self.prob[column]
        return torch.where(keep, v, self.alias[column])
