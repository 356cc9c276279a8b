"""Helpers for tests that look at the autograd graph a layer or net built."""
from __future__ import annotations

import torch


def in_graph(t: torch.Tensor, node_name: str) -> bool:
    """Whether the autograd graph behind t has a node of that class name (e.g. "_OneDnnLinearBackward")."""
    todo, seen = [t.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if type(fn).__name__ == node_name:
            return True
        todo += [f for f, _ in fn.next_functions]
    return False
