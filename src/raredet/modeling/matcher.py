"""The TF OD API's ``argmax_matcher``: assign each anchor the ground-truth box it overlaps most.

Given a similarity (IoU) matrix ``[B, N, A]`` between ``N`` ground-truth boxes and ``A`` anchors, each
anchor (column) takes the box (row) with the highest similarity, then the thresholds decide:

* ``similarity >= matched_threshold``: matched (the box index, ``>= 0``);
* ``unmatched_threshold <= similarity < matched_threshold``: ``IGNORE`` (no loss), or ``BACKGROUND``
  when ``negatives_lower_than_unmatched`` is false;
* ``similarity < unmatched_threshold``: ``BACKGROUND``, or ``IGNORE`` when
  ``negatives_lower_than_unmatched`` is false.

``force_match_for_each_row`` then gives every valid box its best anchor, whatever the thresholds (when
two boxes want the same anchor the lower box index wins, as ``argmax`` in the TF OD API does).
``ignore_thresholds`` matches every anchor to its best box. An image with no valid box has every anchor
``BACKGROUND``.
"""

from __future__ import annotations

import torch
from torch import Tensor

BACKGROUND = -1
IGNORE = -2


class ArgMaxMatcher:
    """Per-anchor argmax matching with the TF OD API's thresholds (see the module docstring)."""

    def __init__(
        self,
        matched_threshold: float = 0.5,
        unmatched_threshold: float = 0.5,
        negatives_lower_than_unmatched: bool = True,
        force_match_for_each_row: bool = False,
        ignore_thresholds: bool = False,
    ) -> None:
        if unmatched_threshold > matched_threshold:
            raise ValueError(
                f"unmatched_threshold ({unmatched_threshold}) must not exceed "
                f"matched_threshold ({matched_threshold}); lower it or raise matched_threshold"
            )
        if unmatched_threshold == matched_threshold and not negatives_lower_than_unmatched:
            raise ValueError(
                "with negatives_lower_than_unmatched false the band between "
                "unmatched_threshold and matched_threshold holds the negatives, so the two thresholds "
                f"must differ (both are {matched_threshold})"
            )
        self.matched_threshold = matched_threshold
        self.unmatched_threshold = unmatched_threshold
        self.negatives_lower_than_unmatched = negatives_lower_than_unmatched
        self.force_match_for_each_row = force_match_for_each_row
        self.ignore_thresholds = ignore_thresholds

    def __call__(self, similarity: Tensor, valid: Tensor) -> Tensor:
        """``similarity [B, N, A]``, ``valid [B, N]`` bool (False = padding) -> ``match [B, A]`` int64."""
        lowest = torch.finfo(similarity.dtype).min
        sim = similarity.masked_fill(~valid[:, :, None], lowest)
        if sim.shape[1] == 0:
            return torch.full(sim.shape[::2], BACKGROUND, dtype=torch.int64, device=sim.device)
        best_value, match = sim.max(dim=1)  # [B, A]
        if not self.ignore_thresholds:
            match = self._apply_thresholds(match, best_value)
        if self.force_match_for_each_row:
            match = self._force_match_rows(match, sim, valid)
        has_box = valid.any(dim=1, keepdim=True)  # [B, 1]
        return torch.where(has_box, match, BACKGROUND)

    def _apply_thresholds(self, match: Tensor, best_value: Tensor) -> Tensor:
        """Replace matches below the thresholds by BACKGROUND / IGNORE. All ``[B, A]``."""
        below = best_value < self.unmatched_threshold
        between = (best_value >= self.unmatched_threshold) & (best_value < self.matched_threshold)
        below_code, between_code = (
            (BACKGROUND, IGNORE) if self.negatives_lower_than_unmatched else (IGNORE, BACKGROUND)
        )
        match = torch.where(below, below_code, match)
        return torch.where(between, between_code, match)

    def _force_match_rows(self, match: Tensor, sim: Tensor, valid: Tensor) -> Tensor:
        """Give every valid row its best column. ``match [B, A]``, ``sim [B, N, A]``, ``valid [B, N]``."""
        batch, num_boxes, num_anchors = sim.shape
        best_anchor = sim.argmax(dim=2)  # [B, N]
        # Invalid rows claim a spare column A that is dropped; a contested anchor goes to the lowest row
        # index, as argmax over ties does in the TF OD API.
        target = torch.where(valid, best_anchor, num_anchors)
        row_ids = torch.arange(num_boxes, device=sim.device).expand(batch, num_boxes)
        winner = torch.full((batch, num_anchors + 1), num_boxes, dtype=torch.int64, device=sim.device)
        winner = winner.scatter_reduce(1, target, row_ids, reduce="amin")[:, :num_anchors]  # [B, A]
        return torch.where(winner < num_boxes, winner, match)
