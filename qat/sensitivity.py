"""`python -m qat.sensitivity`: which op groups to leave in fp32, ranked by what quantizing them costs.

Groups follow the fusions of the int8 graph: Q/K/V as one group, attention output, FFN in, FFN out (a residual
add joins the Linear of its module, with which IPEX fuses it), each layer's attention matmuls, the embedding
adds, and any head. Each group is measured both ways against fp32 on held-out texts (and dev task sets): only
this group in int8, and everything but this group in int8. The ranking is by how much the all-int8 loss falls
when the group stays fp32; the skip list is the top k groups, or the fewest top groups that bring the loss on
`recovery.metric` under `recovery.threshold`.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import hydra
import matplotlib
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from qat.atomic import atomic_path, write_json, write_text
from qat.calibrate import calibrate
from qat.config import QuantConfig, RunConfig, to_run_config
from qat.data import calibration_texts
from qat.errors import QatError, reported_as_one_line
from qat.evaluate import embed, evaluate, evaluate_recipe, load_eval_data, relative_loss
from qat.load import EncoderModule, load_encoder
from qat.quant.qconf import RECIPE_KINDS, Qconf

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402  (after choosing the non-interactive backend)

log = logging.getLogger(__name__)
QKV = re.compile(r"(.*\.attention\.self)\.(query|key|value)")


def sensitivity_groups(qconf: Qconf) -> dict[str, list[str]]:
    """Group name -> the skip entries (op names) of the qconf's int8 ops in that group, in model order."""
    ops = [op for op in qconf.ops if op.kind in RECIPE_KINDS and op.quantized]
    linears = [op.name for op in ops if op.kind == "linear"]
    groups: dict[str, list[str]] = {}
    for op in ops:
        group = op.name
        if match := QKV.fullmatch(op.name):
            group = f"{match.group(1)}.qkv"
        elif op.kind == "residual_add":
            owner = op.name.removesuffix(".add")
            group = next((name for name in linears if name.startswith(owner + ".")), op.name)
        entries = groups.setdefault(group, [])
        if op.name not in entries:
            entries.append(op.name)
    return groups


def run_sensitivity(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Measure every group both ways, rank, choose the skip list, write json/markdown/chart/TensorBoard."""
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    texts, _ = calibration_texts(cfg.data)
    metric, rank_by = cfg.recovery.metric, cfg.sensitivity.metric
    dev = load_eval_data(cfg.data)[1].for_metrics([metric, rank_by])
    encoder = load_encoder(cfg.model)
    calibration = calibrate(encoder, texts, cfg.calib, cfg.quant, cfg.smoothquant)
    fp32_table = embed(EncoderModule(encoder.model).eval(), encoder, dev.texts(), cfg.eval.batch_size)
    fp32 = evaluate(fp32_table, fp32_table, dev)
    for name in (metric, rank_by):
        if name not in fp32:
            raise QatError(f"metric {name!r} is not measured on this data; expected one of {sorted(fp32)}")
    groups = sensitivity_groups(calibration.qconf)
    if not groups:
        raise QatError(f"quant.ops={cfg.quant.ops} with skip {cfg.quant.skip} puts no op in int8; expected a recipe to analyse")

    def measure(skip: list[str]) -> dict[str, float]:
        """The recipe with these groups' ops left fp32 as well (the user's quant.skip always stays fp32)."""
        qconf = calibration.qconf.copy()
        qconf.apply_recipe(dataclasses.replace(cfg.quant, skip=cfg.quant.skip + skip))
        return evaluate_recipe(calibration.model, qconf, encoder, dev, fp32_table, cfg.eval.batch_size)

    def loss(metrics: dict[str, float], name: str) -> float:
        return relative_loss(name, fp32[name], metrics[name])

    all_int8 = measure([])
    rows = []
    for group, entries in groups.items():
        others = [e for g, es in groups.items() if g != group for e in es]
        only, all_but = measure(others), measure(entries)
        rows.append({"group": group, "skip": entries, "only_this": only, "all_but_this": all_but,
                     "damage_alone": loss(only, rank_by), "gain_if_fp32": loss(all_int8, rank_by) - loss(all_but, rank_by)})
        log.info("%s: alone %s loss %.5g; left fp32 the all-int8 loss falls by %.5g", group, rank_by,
                 rows[-1]["damage_alone"], rows[-1]["gain_if_fp32"])
    ranking = sorted(rows, key=lambda r: r["gain_if_fp32"], reverse=True)

    prefixes = [{"groups": 0, "metrics": all_int8, "loss": loss(all_int8, metric)}]
    limit = cfg.sensitivity.top_k if cfg.sensitivity.top_k is not None else min(cfg.sensitivity.max_skip, len(ranking))
    while len(prefixes) <= limit and (cfg.sensitivity.top_k is not None or prefixes[-1]["loss"] > cfg.recovery.threshold):
        count = len(prefixes)
        metrics = measure([e for r in ranking[:count] for e in r["skip"]])
        prefixes.append({"groups": count, "metrics": metrics, "loss": loss(metrics, metric)})
        log.info("top %d groups fp32: %s loss %.5g", count, metric, prefixes[-1]["loss"])
    chosen = prefixes[-1]
    skip = [e for r in ranking[:chosen["groups"]] for e in r["skip"]]
    result = {
        "model": encoder.source, "recipe": sorted(cfg.quant.op_kinds()), "user_skip": cfg.quant.skip, "rank_by": rank_by, "metric": metric,
        "threshold": cfg.recovery.threshold, "fp32": fp32, "all_int8": all_int8, "ranking": ranking,
        "prefixes": prefixes, "skip_groups": [r["group"] for r in ranking[:chosen["groups"]]], "skip": skip,
        "reached_threshold": chosen["loss"] <= cfg.recovery.threshold,
    }
    write_outputs(result, cfg.quant, run_dir)
    return result


def write_outputs(result: dict[str, Any], quant: QuantConfig, run_dir: Path) -> None:
    write_json(run_dir / "sensitivity.json", result)
    write_text(run_dir / "sensitivity.md", sensitivity_table(result))
    skipped = dataclasses.replace(quant, skip=list(dict.fromkeys(quant.skip + result["skip"])))
    write_text(run_dir / "conf" / "quant" / "sensitive.yaml",
               "# Written by qat.sensitivity: python -m qat.train --config-dir <this run>/conf quant=sensitive\n"
               + OmegaConf.to_yaml(OmegaConf.structured(skipped)))
    figure = ranking_chart(result)
    with atomic_path(run_dir / "sensitivity.png") as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        writer.add_figure("sensitivity/ranking", figure)
    pyplot.close(figure)


def ranking_chart(result: dict[str, Any]) -> Any:
    ranking = result["ranking"]
    labels = [r["group"].removeprefix("encoder.layer.") for r in ranking]
    figure, axes = pyplot.subplots(1, 2, figsize=(12, 0.3 * len(ranking) + 1.5), sharey=True)
    axes[0].barh(labels, [r["gain_if_fp32"] for r in ranking], color="tab:blue")
    axes[0].set_title(f"all-int8 {result['rank_by']} loss removed\nwhen the group stays fp32")
    axes[1].barh(labels, [r["damage_alone"] for r in ranking], color="tab:orange")
    axes[1].set_title(f"{result['rank_by']} loss with only\nthis group in int8")
    axes[0].invert_yaxis()
    figure.tight_layout()
    return figure


def sensitivity_table(result: dict[str, Any]) -> str:
    rank_by, metric = result["rank_by"], result["metric"]
    lines = [f"# Sensitivity ({', '.join(result['recipe'])} in int8), ranked by {rank_by}", "",
             f"All int8: {rank_by} {result['all_int8'][rank_by]:.5g}, {metric} {result['all_int8'][metric]:.5g} "
             f"(fp32 {result['fp32'][metric]:.5g}).", "",
             f"| rank | group | loss removed if fp32 | loss alone | {metric} all-but | {metric} only |", "|---|---|---|---|---|---|"]
    for rank, r in enumerate(result["ranking"], start=1):
        lines.append(f"| {rank} | {r['group']} | {r['gain_if_fp32']:.5g} | {r['damage_alone']:.5g} | "
                     f"{r['all_but_this'][metric]:.5g} | {r['only_this'][metric]:.5g} |")
    lines += ["", f"| top groups fp32 | {metric} | relative loss |", "|---|---|---|"]
    lines += [f"| {p['groups']} | {p['metrics'][metric]:.5g} | {p['loss']:.5g} |" for p in result["prefixes"]]
    reached = "reaches" if result["reached_threshold"] else "does NOT reach"
    lines += ["", f"Skip list ({len(result['skip_groups'])} groups, {reached} the threshold {result['threshold']}): "
              f"{result['skip']}"]
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="../conf", config_name="sensitivity")
def main(cfg: DictConfig) -> None:
    with reported_as_one_line():
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        result = run_sensitivity(to_run_config(cfg), run_dir)
        print(f"skip {result['skip_groups']}; results: {run_dir / 'sensitivity.md'}; "
              f"use: python -m qat.train --config-dir {run_dir / 'conf'} quant=sensitive")


if __name__ == "__main__":
    main()
