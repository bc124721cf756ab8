"""The catalogue audit: rows whose catalogue label is probably wrong.

Every row needs a probability that was predicted without training on it. Val, test and control
rows get the mean of every given run's probabilities. Train rows get them from cross-fitting
runs (--config.data.num_folds, configs/audit_fold.py): a run trained without fold k predicts
fold k's rows. Per head, cleanlab's confident learning (`cleanlab.filter.find_label_issues`,
ranked by self-confidence) picks the rows whose given label is least consistent with those
probabilities; the suggested label is the most probable class. Separately, rows whose labels
contradict each other across the hierarchy (--config.hierarchy) are flagged: a fine label that
in training belongs to one coarse class (articleType Tshirts -> masterCategory Apparel) but sits
under another.

Writes audit.csv (id, subset, head, given and suggested label, the model's probability for each,
rank, reason), audit_<head>.png (the top rows with their photos) and not_audited.csv (rows that
have no out-of-sample prediction, and the rows training skipped, e.g. for an unreadable image).
"""

import csv
import os
import warnings

import jax
import numpy as np
import pandas as pd

from fashion_jax import errors
from fashion_jax.data import dataset
from fashion_jax.evaluation import config_checks
from fashion_jax.evaluation import figures
from fashion_jax.evaluation.evaluators import base
from fashion_jax.inference import predictor

AUDIT_CSV = "audit.csv"
NOT_AUDITED_CSV = "not_audited.csv"
COLUMNS = (
    "id",
    "subset",
    "head",
    "given_label",
    "suggested_label",
    "given_probability",
    "suggested_probability",
    "rank",
    "reason",
)


def confident_learning(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Row indices of likely label errors, most likely first (cleanlab)."""
    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():  # Classes with few rows: cleanlab warns and carries on.
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(
            find_label_issues(
                labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1
            ),
            np.int64,
        )


def hierarchy_contradictions(split: pd.DataFrame, levels: list, max_share: float) -> list:
    """(row index, coarse head, given, suggested, reason) of rows whose coarse label is one that
    their fine label has in at most `max_share` of the training rows, when one coarse label
    has most of them."""
    train = split[split["subset"] == "train"]
    found = []
    for depth, coarse in enumerate(levels[:-1]):
        for fine in levels[depth + 1 :]:
            pairs = train[(train[coarse] != "") & (train[fine] != "")]
            counts = pairs.groupby([fine, coarse]).size()
            totals = pairs.groupby(fine).size()
            for (value, given), count in counts.items():
                share = count / totals[value]
                dominant = counts[value].idxmax()
                dominant_share = counts[value].max() / totals[value]
                if share > max_share or dominant_share < 0.5 or dominant == given:
                    continue
                rows = split.index[(split[fine] == value) & (split[coarse] == given)]
                reason = (
                    f"hierarchy: {coarse}={given} with {fine}={value}; in training {fine}="
                    f"{value} is {coarse}={dominant} in {dominant_share:.0%} of "
                    f"{totals[value]} rows"
                )
                found += [(int(r), coarse, given, dominant, reason) for r in rows]
    return found


@base.register
class Audit(base.Evaluator):
    """Yields the out-of-sample ensemble's predictions; writes the audit files."""

    name = "audit"

    @classmethod
    def check_section(cls, section, num_runs: int) -> None:
        base.check_at_least("audit", section, 0, "gallery_size", "max_rows")
        if not 0 < section.contradiction_share < 0.5:
            raise errors.ConfigError(
                f"{base.flag('audit', 'contradiction_share')}={section.contradiction_share} must "
                "be in (0, 0.5), e.g. 0.02."
            )

    def run(self, ctx):
        self.findings = self._find(ctx)
        members = [c.name for c in ctx.checkpoints]
        if len(members) == 1 and "single" in config_checks.names(ctx.config.evaluators):
            return  # The single evaluator already reports this very model.
        yield base.Entry(
            f"out-of-sample ensemble of {len(members)} runs",
            "ensemble",
            {s: self._mean(ctx, s) for s in ctx.subsets},
            {"members": members, "weights": [1 / len(members)] * len(members)},
            detailed=False,
        )

    @staticmethod
    def _mean(ctx, subset: str) -> np.ndarray:
        return predictor.mix([ctx.checkpoint_log_probs(c, subset) for c in ctx.checkpoints], None)

    def _out_of_sample(self, ctx):
        """(ids, subsets, labels, probabilities) of every row of this head that has an
        out-of-sample prediction, and the ids of train rows that have none."""
        parts, missing = [], []
        for subset in ("val", "test", "control"):
            data = ctx.data.subset(subset)
            parts.append((data.ids, [subset] * len(data.ids), data.labels, self._mean(ctx, subset)))
        train = ctx.data.subset("train")
        folds = ctx.data.split.set_index("id").reindex(train.ids).get(dataset.FOLD_COLUMN)
        covered = np.zeros(len(train.ids), bool)
        for checkpoint in ctx.checkpoints:
            config = checkpoint.run.config.data
            if not config.get("num_folds") or folds is None:
                continue
            rows = (folds.astype(int) == int(config.fold)).to_numpy() & ~covered
            if rows.any():
                log_probs = self._held_out(ctx, checkpoint, train.images[rows])
                parts.append(
                    (train.ids[rows], ["train"] * int(rows.sum()), train.labels[rows], log_probs)
                )
                covered |= rows
        missing = train.ids[~covered]
        ids, subsets, labels, log_probs = (np.concatenate([p[i] for p in parts]) for i in range(4))
        return ids, subsets, labels, np.exp(log_probs.astype(np.float64)), missing

    @staticmethod
    def _held_out(ctx, checkpoint, images):
        variables = jax.device_put(checkpoint.load())
        return predictor.predict_array(
            checkpoint.run.model, variables, images, ctx.config.batch_size, ctx.head, ctx.config.tta
        )

    def _find(self, ctx) -> dict:
        ids, subsets, labels, probabilities, missing = self._out_of_sample(ctx)
        probabilities = probabilities / probabilities.sum(-1, keepdims=True)
        names = ctx.class_names
        head = ctx.head or ctx.runs[0].config.data.label_column
        rows = []
        for rank, i in enumerate(confident_learning(labels, probabilities), start=1):
            suggested = int(np.argmax(probabilities[i]))
            rows.append(
                {
                    "id": int(ids[i]),
                    "subset": subsets[i],
                    "head": head,
                    "given_label": names[labels[i]],
                    "suggested_label": names[suggested],
                    "given_probability": float(probabilities[i, labels[i]]),
                    "suggested_probability": float(probabilities[i, suggested]),
                    "rank": rank,
                    "reason": "confident learning: the given label is unlikely out of sample",
                }
            )
        levels = [
            h for h in config_checks.names(ctx.config.hierarchy) if h in (ctx.runs[0].heads or {})
        ]
        contradictions = []
        if levels and head == levels[0]:
            split = ctx.data.split.reset_index(drop=True)
            position = {int(i): n for n, i in enumerate(ids)}
            found = hierarchy_contradictions(split, levels, self.section.contradiction_share)
            for index, coarse, given, suggested, reason in found:
                row_id = int(split.loc[index, "id"])
                n = position.get(row_id)
                p = probabilities[n] if n is not None and coarse == head else None
                contradictions.append(
                    {
                        "id": row_id,
                        "subset": split.loc[index, "subset"],
                        "head": coarse,
                        "given_label": given,
                        "suggested_label": suggested,
                        "given_probability": float(p[names.index(given)]) if p is not None else "",
                        "suggested_probability": float(p[names.index(suggested)])
                        if p is not None and suggested in names
                        else "",
                        "rank": 0,
                        "reason": reason,
                    }
                )
            contradictions.sort(
                key=lambda r: (r["given_probability"] == "", r["given_probability"])
            )
            for rank, row in enumerate(contradictions, start=1):
                row["rank"] = rank
        return {
            "head": head,
            "issues": rows,
            "contradictions": contradictions,
            "audited": len(ids),
            "missing": [int(i) for i in missing],
            "images": {int(i): n for n, i in enumerate(ids)},
            "subsets": subsets,
        }

    def write_files(self, ctx, output_dir: str) -> list:
        """audit.csv, the gallery, not_audited.csv; returns report.md's audit section."""
        found = self.findings
        os.makedirs(output_dir, exist_ok=True)
        limit = self.section.max_rows or None
        rows = found["issues"][:limit] + found["contradictions"][:limit]
        with open(os.path.join(output_dir, AUDIT_CSV), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        skipped_path = os.path.join(ctx.runs[0].workdir, dataset.SKIPPED_FILE)
        skipped = pd.read_csv(skipped_path) if os.path.exists(skipped_path) else pd.DataFrame()
        with open(os.path.join(output_dir, NOT_AUDITED_CSV), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id_or_line", "reason"])
            writer.writerows(
                [
                    i,
                    "train row without an out-of-sample prediction (no cross-fitting run for its fold)",
                ]
                for i in found["missing"]
            )
            writer.writerows(
                [r.id_or_line, f"skipped by training: {r.reason}"] for r in skipped.itertuples()
            )
        gallery = self._gallery(ctx, output_dir, found)
        head, issues = found["head"], found["issues"]
        lines = [
            "",
            f"## Audit of the {head} labels",
            "",
            f"{found['audited']} rows audited with out-of-sample probabilities; "
            f"{len(issues)} likely label errors by confident learning "
            f"([{AUDIT_CSV}]({AUDIT_CSV}), ranked); {len(found['contradictions'])} rows whose "
            f"labels contradict the hierarchy; {len(found['missing']) + len(skipped)} rows not "
            f"audited ([{NOT_AUDITED_CSV}]({NOT_AUDITED_CSV}): {len(skipped)} skipped by "
            f"training, {len(found['missing'])} without an out-of-sample prediction).",
        ]
        if gallery:
            lines += ["", f"![the top suggestions]({gallery})"]
        return lines

    def _gallery(self, ctx, output_dir, found):
        top = found["issues"][: self.section.gallery_size]
        if not top:
            return None
        whole = {s: ctx.data.subset(s) for s in ("train", "val", "test", "control")}
        images, captions = [], []
        for row in top:
            data = whole[row["subset"]]
            images.append(data.images[int(np.flatnonzero(data.ids == row["id"])[0])])
            captions.append(
                f"#{row['rank']} id {row['id']}\ngiven: {row['given_label']}\n"
                f"suggested: {row['suggested_label']} ({row['suggested_probability']:.2f})"
            )
        name = f"audit_{found['head']}.png"
        figures.plot_misclassified(
            np.stack(images),
            captions,
            os.path.join(output_dir, name),
            f"Likely {found['head']} label errors, most likely first",
        )
        return name
