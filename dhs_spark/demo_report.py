"""The demo's summary (``summary.json``) and its HTML report (``report.html``).

:func:`build_summary` gathers the stage results of one demo run (every number the report shows,
under ``results``), the stage times and the run details; :func:`write_demo_report` renders that
summary, plus the figures drawn from the run's own files (gallery arrays, COSMOS library,
anchor PNGs), with the generic builder of :mod:`dhs_spark.report`. Nothing in the report is
typed in by hand: a number that is not in the summary is not in the report.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import shlex

import numpy as np

from dhs_spark.report import Section, file_data_uri, grz_to_rgb, png_data_uri, write_report

BANDS = ("g", "r", "z")
HARDNEG_MATCH_NOTE = "stamps of this run that fall within the match radius of a mined hard negative (what a retraining would up-weight)"
REAL_ANCHOR_STATEMENT = (
    "Real-anchor numbers need real DR10 imaging. Offline, this demo has real cutouts for only the six DESI candidates shipped in "
    "tests/data/cutouts_dr10; every other known lens and every ring or merger of the merged catalogues has no image here, so the "
    "contamination, separation and AUROC criteria cannot be measured and the anchor gate cannot pass. To score them all, run "
    "`dhs anchors compute --known-lens-dir demo_out/catalogs --hard-neg-dir demo_out/catalogs --checkpoint demo_out/train/best.pt "
    "--cutout-service-url https://www.legacysurvey.org/viewer --output-dir anchors_dr10` on a machine that can reach the "
    "Legacy Survey cutout service (or --coadd-root with a local copy of the DR10 coadds)."
)


def build_summary(paths, prof, seed: int, runner) -> dict:
    """The summary dict: ``results`` (per stage, deterministic for a seed and profile),
    ``timings_s`` and ``reused`` per stage, and ``run`` details."""
    from dhs_spark.config.experiment import git_info
    from dhs_spark.demo import pipeline_config, spark_command

    cmd = spark_command(paths, prof, seed)
    cmd[0] = "spark-submit"
    pop = pipeline_config(paths).population
    return {
        "results": dict(runner.results),
        "timings_s": {k: round(v, 2) for k, v in runner.timings_s.items()},
        "reused": dict(runner.reused),
        "run": {
            "profile": dataclasses.asdict(prof),
            "seed": seed,
            "output": str(paths.root),
            "spark_command": shlex.join(cmd),
            "injection_population": {"mode": pop.mode, "selection": pop.selection, "detectable_min_arc_snr": pop.detectable_min_arc_snr,
                                     "detectable_min_magnification": pop.detectable_min_magnification},
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
            "git": git_info(),
        },
    }


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _band_display(img: np.ndarray, scale: float) -> np.ndarray:
    """asinh stretch of one band: linear below ~scale/6, logarithmic above; 1.0 at ``scale``."""
    soft = max(scale, 1e-9) / 6.0
    return np.arcsinh(img / soft) / np.arcsinh(6.0)


def gallery_figure(host: np.ndarray, stamps: np.ndarray, mode: str):
    """Per example three rows (host, arc alone = stamp - host, stamp) x (g, r, z, RGB)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(stamps)
    fig, axes = plt.subplots(3 * n, 4, figsize=(6.4, 4.9 * n), squeeze=False)
    for k in range(n):
        arc = stamps[k] - host[k]
        band_scale = [max(float(np.percentile(stamps[k][b], 99.5)), 1e-6) for b in range(3)]
        arc_scale = [max(float(np.abs(arc[b]).max()), 1e-6) for b in range(3)]
        rgb_scale = max(float(np.percentile(stamps[k].mean(axis=0), 99.5)), 1e-6)
        for r, (label, img, scales, rgb_s) in enumerate(
            (("host", host[k], band_scale, rgb_scale), ("arc alone", arc, arc_scale, None), ("stamp", stamps[k], band_scale, rgb_scale))
        ):
            row = 3 * k + r
            for b in range(3):
                ax = axes[row, b]
                ax.imshow(_band_display(img[b], scales[b]), origin="lower", cmap="gray", vmin=-0.1, vmax=1.0)
                if row == 0:
                    ax.set_title(BANDS[b])
            axes[row, 3].imshow(grz_to_rgb(img, scale=rgb_s) if rgb_s else grz_to_rgb(np.clip(img, 0, None)), origin="lower")
            if row == 0:
                axes[row, 3].set_title("RGB (z,r,g)")
            axes[row, 0].set_ylabel(f"#{k + 1} {label}", fontsize=8)

    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("real COSMOS (HST) sources" if mode == "cosmos" else "Sersic sources", fontsize=10)
    fig.subplots_adjust(hspace=0.06, wspace=0.04, top=0.95)
    return fig


def cosmos_figure(images: np.ndarray, idents: list[str], heldout: set[str], pixscale_arcsec: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(idents)
    cols = 8
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    half = images.shape[-1] * pixscale_arcsec / 2
    for ax in axes.ravel():
        ax.axis("off")
    for k, ident in enumerate(idents):
        ax = axes.ravel()[k]
        img = images[k]
        ax.imshow(np.arcsinh(img / (img.max() / 30)), origin="lower", cmap="magma", extent=(-half, half, -half, half))
        ax.set_title(f"{ident}\n{'HELD OUT' if ident in heldout else 'train'}", fontsize=7, color="#b00" if ident in heldout else "#222")
    fig.tight_layout()
    return fig


def roc_figure(score: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = score["test"]
    fpr, tpr = np.asarray(test["roc"]["fpr"]), np.asarray(test["roc"]["tpr"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(fpr, tpr, drawstyle="steps-post", color="C0")
    a1.plot([0, 1], [0, 1], ls=":", color="grey")
    a1.set_xlabel("false positive rate")
    a1.set_ylabel("true positive rate")
    a1.set_title(f"SYNTHETIC test split: AUROC {test['auroc']:.3f}")
    floor = 1.0 / max(test["n_negatives"], 1)
    keep = fpr > 0
    a2.plot(fpr[keep], tpr[keep], drawstyle="steps-post", color="C0")
    for key, entry in test["tpr_at_fpr"].items():
        a2.axvline(entry["fpr"], ls="--", color="C3" if entry["below_resolution"] else "C2", lw=0.8)
        a2.annotate(f"{key}{' (below resolution)' if entry['below_resolution'] else ''}", (entry["fpr"], 0.02), rotation=90, fontsize=7)
    a2.axvspan(1e-5, floor, color="0.9")
    a2.set_xscale("log")
    a2.set_xlim(1e-4 / 2, 1)
    a2.set_ylim(0, 1.02)
    a2.set_xlabel(f"false positive rate (log; shaded: < 1/{test['n_negatives']} negatives)")
    a2.set_title("low-FPR end")
    fig.tight_layout()
    return fig


def completeness_figure(score: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = score["test"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for ax, key, label in ((axes[0], "completeness_theta_e", "theta_E (arcsec)"), (axes[1], "completeness_arc_snr", "arc SNR (sum)")):
        bins = [b for b in test[key] if b["n"]]
        names = [_bin_name(b) for b in bins]
        values = [b["completeness"] for b in bins]
        ax.bar(range(len(bins)), values, color="C0")
        for i, b in enumerate(bins):
            ax.annotate(f"n={b['n']}", (i, values[i] + 0.02), ha="center", fontsize=7)
        ax.set_xticks(range(len(bins)), names, fontsize=8)
        ax.set_ylim(0, 1.12)
        ax.set_xlabel(label)
        ax.set_ylabel(f"completeness (score >= {test['score_threshold']})")
    fig.suptitle("SYNTHETIC test-split injections", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def _yes(flag) -> str:
    return "n/a" if flag is None else "yes" if flag else "no"


def _psf_note(fwhms: list[float]) -> str:
    from dhs_spark.sims.cosmos_build import HST_F814W_PSF_FWHM_ARCSEC

    return " (HST F814W PSF left in)" if fwhms == [HST_F814W_PSF_FWHM_ARCSEC] else " (HST PSF deconvolved by GalSim, Gaussian applied)"


def _bin_name(b: dict) -> str:
    return f"{b['lo']:g} - {'inf' if b['hi'] is None else format(b['hi'], 'g')}"


def _population_note(pop: dict) -> str:
    what = f"population.mode {pop['mode']}, selection {pop['selection']}"
    if pop["selection"] == "detectable":
        what += (f" (expected arc SNR >= {pop['detectable_min_arc_snr']:g} and magnification >= {pop['detectable_min_magnification']:g}; "
                 "population.selection none gives the full faint range for completeness studies)")  # fmt: skip
    return what


def _lens_note(pop: dict) -> str:
    if not pop.get("n"):
        return "n/a"
    rho = pop["spearman_theta_e_vs_host_luminosity"]
    return (f"median {pop['theta_e_median_arcsec']:.2f}\" (10-90%: {pop['theta_e_p10_p90_arcsec'][0]:.2f} - {pop['theta_e_p10_p90_arcsec'][1]:.2f}\"), "
            f"{100 * pop['fraction_above_2p5_arcsec']:.1f}% above 2.5\", Spearman with host luminosity {_fmt_value(rho)}")  # fmt: skip


def _overview(summary: dict) -> Section:
    r, run = summary["results"], summary["run"]
    gates = r["spark_pipeline"]["gates"]
    score = r["score"]["test"]
    anchors = r["anchors"]
    total = sum(summary["timings_s"].values())
    p = [
        "Every number on this page was produced by this run of `make demo` (python -m dhs_spark.demo) and is repeated in summary.json. "
        "The survey is a MOCK (real DR10 brick PSF/depth rows and real LRG photometry, drawn positions, shapes and noise); the lensed "
        "sources are REAL HST galaxies (COSMOS/AEGIS F814W); the known lenses, rings and mergers are REAL catalogues; the six anchor "
        "cutouts are REAL DR10 images. Performance on injected stamps is SYNTHETIC and is labelled so.",
        f"Pipeline command: {run['spark_command']}",
    ]
    rows = [
        ["profile / seed", f"{run['profile']['name']} / {run['seed']}"],
        ["injection population (4a)", _population_note(run["injection_population"])],
        ["stamps written (4c)", gates["counts"]["stamps"]],
        ["theta_E of the injections (4d)", _lens_note(gates["lens_population"])],
        ["data gates (4d)", gates["passed"]],
        ["synthetic test AUROC", score["auroc"]],
        ["held-out-galaxy injections recovered at 0.5", anchors["heldout"]["metrics"]["recovery_rate_0p5"]],
        ["real DR10 candidates recovered at 0.5", f"{anchors['real']['metrics']['n_recovered_at_0p5']} of {anchors['real']['metrics']['n_known_lenses']}"],
        ["real anchor gate", anchors["real"]["anchor_gate_passed"]],
        ["realism probe AUC (real DR10 candidates vs injections)", summary["results"]["realism"]["probe"]["probe"].get("auc")],
        ["sum of stage times (s)", round(total, 1)],
    ]
    return Section("Overview", paragraphs=p, tables=[("This run", ["item", "value"], rows)])


def _timings(summary: dict) -> Section:
    rows = [[name, secs, "reused (time of the run that made it)" if summary["reused"].get(name) else "ran"] for name, secs in summary["timings_s"].items()]
    rows.append(["total", round(sum(summary["timings_s"].values()), 2), ""])
    run = summary["run"]
    note = (f"Wall-clock seconds per stage: Spark local[2] and the CPU trainer on this machine ({run['cpu_count']} CPUs; load average "
            f"{' / '.join(map(str, run['load_average_1_5_15min']))} over 1 / 5 / 15 min when the report was written: a load above the "
            "CPU count means other processes shared the cores and the times are inflated).")
    return Section("Time per stage", paragraphs=[note],
                   tables=[("Stage times", ["stage", "seconds", "status"], rows)])  # fmt: skip


def _inputs(summary: dict, paths) -> Section:
    r = summary["results"]
    mock, cosmos, cats = r["mock_survey"], r["cosmos_library"], r["catalogues"]
    sec = Section("Inputs: survey, sources, catalogues")
    sec.tables.append(("Mock survey", ["item", "value"], [
        ["bricks (real DR10 south brick rows)", mock["n_bricks"]], ["brick image (px at 0.262\")", mock["brick_size_pix"]],
        ["objects", mock["n_objects"]], *[[f"objects: {k}", v] for k, v in mock["objects_by_role"].items()],
        [f"selected by LRG cuts {mock['lrg_variant']}", mock["n_selected_lrg"]], ["selected that are not mock LRGs", mock["n_selected_not_lrg_role"]],
    ]))  # fmt: skip
    sec.tables.append(("COSMOS source library (real HST galaxies, 0.03\"/px)", ["catalogue", "galaxies", "PSF of the drawn galaxies (FWHM, arcsec)"],
                       [[c["name"], c["n"], ", ".join(f"{f:g}" for f in c["psf_fwhm_arcsec"]) + _psf_note(c["psf_fwhm_arcsec"])] for c in cosmos["catalogues"]]))  # fmt: skip
    sec.paragraphs.append(
        f"{cosmos['n_galaxies']} galaxies split by the hash of their ident (salt {cosmos['split_salt']}, test fraction {cosmos['test_fraction']}): "
        f"training side {', '.join(cosmos['train_idents'])}; held out {', '.join(cosmos['heldout_idents'])}. The pipeline sees only the "
        f"training side; the held-out galaxies appear only in the held-out anchor set."
    )
    try:
        import h5py

        with h5py.File(paths.cosmos_all, "r") as f:
            images = f["images"][()]
            idents = [v.decode() for v in f["ident"][()]]
        sec.images.append(("The library's galaxies (asinh stretch; held-out ones in red)",
                           png_data_uri(cosmos_figure(images, idents, set(cosmos["heldout_idents"]), cosmos["pixel_scale_arcsec"]))))  # fmt: skip
    except OSError:
        sec.paragraphs.append(f"(library file {paths.cosmos_all} not readable: no thumbnails)")
    src_rows = [[k, v["status"], "yes" if v["required"] else "no", v["n_rows"]] for k, v in cats["sources"].items()]
    sec.tables.append(("Catalogues (offline: bundled tables and supplied files)", ["source", "status", "required", "rows"], src_rows))
    sec.tables.append(("Merged catalogues", ["count", "value"], [[k, v] for k, v in cats["counts"].items()]))
    fp = cats["footprint"]
    sec.tables.append((
        "DR10 footprint cross-match", ["table", "rows", f"in a DR10 south brick (of {cats['n_dr10_south_bricks']})",
                                       f"in the {cats['n_bricks_in_excerpt']}-brick excerpt with PSF/depth"],
        [[k, v["n"], v["n_in_dr10_south_brick"], v["n_in_brick_excerpt_with_psf"]] for k, v in fp.items()],
    ))  # fmt: skip
    return sec


def _gallery(summary: dict, paths) -> Section:
    ex = summary["results"]["gallery"]["examples"]
    sec = Section("Stamp gallery: host, arc alone, stamp")
    sec.paragraphs.append(
        "The same test-split hosts and lenses with a real COSMOS source (the pipeline's own stamp, re-made here bit for bit: "
        f"{sum(e['cosmos']['remade_equals_pipeline'] for e in ex)} of {len(ex)} identical) and with a Sersic source of the same "
        "magnitude and colours (for a COSMOS row, the n = 1 round stand-in with the galaxy's half-light radius that 4a's detectability uses). 'arc alone' is stamp minus host: the lensed, PSF-convolved arc with its Poisson noise. Host and stamp "
        "share one asinh stretch per band; the arc has its own. North is up (y = numpy axis 0), stamps 0.262\"/px."
    )
    data = np.load(paths.gallery)
    sec.images.append(("COSMOS (real HST) sources", png_data_uri(gallery_figure(data["host"], data["cosmos"], "cosmos"))))
    sec.images.append(("Sersic sources, same lenses", png_data_uri(gallery_figure(data["host"], data["sersic"], "sersic"))))
    sec.tables.append(("Gallery truth", ["#", "task", "theta_E (\")", "source r (AB)", "COSMOS ident", "mu COSMOS", "arc SNR COSMOS",
                                         "Sersic n / Re (\")", "mu Sersic", "arc SNR Sersic", "re-made = pipeline"],
                       [[f"#{k + 1}", e["task_id"], e["theta_e_arcsec"], e["source_r_mag"], e["cosmos"]["ident"], e["cosmos"]["magnification"],
                         e["cosmos"]["arc_snr_sum"], f"{e['sersic']['sersic_n']:.2f} / {e['sersic']['r_eff_arcsec']:.2f}", e["sersic"]["magnification"],
                         e["sersic"]["arc_snr_sum"], e["cosmos"]["remade_equals_pipeline"]] for k, e in enumerate(ex)]))  # fmt: skip
    return sec


def _fmt_value(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _interval(ci) -> str:
    return "n/a" if not ci or None in ci else f"[{_fmt_value(ci[0])}, {_fmt_value(ci[1])}]"


def gate_table(report: dict) -> list[list]:
    """Rows (gate, value, 95% interval, threshold, pass, meaning or reason) of a
    :func:`dhs_spark.gates.summarise` dict; 'info' gates show '-' for pass."""
    rows = []
    for name, g in report["gates"].items():
        interval = _interval(g.get("interval")) if g.get("interval") else ""
        op = {"max": "<=", "min": ">="}.get(g.get("direction"), "")
        threshold = f"{op} {_fmt_value(g.get('threshold'))}" if g.get("threshold") is not None else ""
        verdict = "-" if g.get("direction") == "info" else _yes(g["pass"])
        note = g.get("reason") or g.get("meaning") or ""
        rows.append([name, _fmt_value(g.get("value")), interval, threshold, verdict, note])
    return rows


GATE_HEADER = ["gate", "value", "95% interval", "threshold", "pass", "meaning (or why not computable)"]


def _gates(summary: dict) -> Section:
    g = summary["results"]["spark_pipeline"]["gates"]
    c = g["counts"]
    split_rows = [[k, v] for k, v in c["stamps_by_split"].items()]
    tb = [[f"{b['theta_e_lo_arcsec']:.1f}-{b['theta_e_hi_arcsec']:.1f}", b["n"], *b["arc_snr_sum_q10_q50_q90"], *b["magnification_q10_q50_q90"]] for b in g["theta_e_bins"]]
    m = summary["results"]["train"]["gates"]
    return Section("Gates", paragraphs=[
        f"Data gates from stage 4d of the Spark pipeline: {'PASSED' if g['passed'] else 'FAILED: ' + '; '.join(g['failures'])}. "
        "A failed data gate stops the demo. The host-only gates score (stamp minus its true arc) of injections against controls: "
        "anything other than the arc that separates the classes (noise, masking, normalisation, host selection) shows there. "
        "The raw core AUC is information: it rises with arc visibility.",
        f"Model gates from the trainer (metrics.json): {'all judged gates passed' if m['all_passed'] else 'FAILED: ' + ', '.join(m['failed'])}"
        + (f"; not computable: {', '.join(m['not_computable'])}" if m["not_computable"] else "") + ".",
    ], tables=[
        ("Data gates (4d)", GATE_HEADER, gate_table(g["gates"])),
        ("Stamps by split", ["split / kind", "stamps"], split_rows),
        ("Injections by theta_E bin (4d)", ["theta_E (\")", "n", "arc SNR q10", "q50", "q90", "mu q10", "q50", "q90"], tb),
        ("Model gates (trainer)", GATE_HEADER, gate_table(m)),
    ])  # fmt: skip


def _performance(summary: dict) -> Section:
    r = summary["results"]
    train, score = r["train"], r["score"]
    test = score["test"]
    fpr_rows = [[k, e["tpr"], e["threshold"], e["n_negatives"], e["n_positives"], _yes(e["below_resolution"])] for k, e in test["tpr_at_fpr"].items()]
    epoch_rows = [[e["epoch"], e.get("lr"), e.get("train_loss"), e.get("val_loss"), e.get("val_auroc")] for e in train["epochs"]]
    sec = Section("Synthetic performance (test split)", paragraphs=[
        f"SYNTHETIC: injected COSMOS arcs vs every label-0 stamp of the held-out test split (controls, null injections, look-alikes) ({test['n_positives']} positives, {test['n_negatives']} "
        f"negatives), scored by the model of the best epoch ({train['best']['epoch']}). These numbers say how well the model separates this "
        "simulation, not how it does on the sky: see the anchors below.",
        "below_resolution = True where there are fewer than 1/fpr negatives: the TPR there is an interpolation between ROC points, a bound rather "
        "than a measurement (it needs at least 1/fpr, better 10/fpr, negatives).",
    ])  # fmt: skip
    sec.tables.append(("TPR at fixed FPR (SYNTHETIC)", ["target FPR", "TPR", "score threshold", "n_negatives", "n_positives", "below_resolution"], fpr_rows))
    sec.tables.append(("AUROC (SYNTHETIC)", ["set", "AUROC"], [["test split, scored by dhs-score", test["auroc"]], ["test split, in training's report", train["test_auroc_in_training"]]]))
    sec.images.append(("ROC, SYNTHETIC test split", png_data_uri(roc_figure(score))))
    sec.tables.append((f"Training (resnet_small, CPU; {train['data']['n_train']} train / {train['data']['n_val']} val / {train['data']['n_test']} test stamps)",
                       ["epoch", "learning rate", "train loss", "val loss", "val AUROC"], epoch_rows))  # fmt: skip
    return sec


def _completeness(summary: dict) -> Section:
    test = summary["results"]["score"]["test"]
    sec = Section("Completeness vs theta_E and arc SNR (SYNTHETIC)", paragraphs=[
        f"Fraction of test-split injections with score >= {test['score_threshold']}, by Einstein radius and by the injected arc's summed SNR."])
    for key, label in (("completeness_theta_e", "theta_E (arcsec)"), ("completeness_arc_snr", "arc SNR (sum)")):
        sec.tables.append((f"Completeness by {label}", [label, "n", "completeness"], [[_bin_name(b), b["n"], b["completeness"]] for b in test[key]]))
    sec.images.append(("Completeness (SYNTHETIC)", png_data_uri(completeness_figure({"test": test}))))
    return sec


def _hard_negatives(summary: dict) -> Section:
    h = summary["results"]["hard_negatives"]
    join = h["join_preview"]
    src_rows = [[k, h["weights"].get(k), h["counts"].get(f"{k}_in"), h["counts"].get(f"{k}_kept")] for k in ("model_fp", "ring", "merger")]
    join_rows = [[k, v.get("lookup_entries"), v.get("matched_negatives"), v.get("matched_positives"), v.get("unmatched_entries")]
                 for k, v in join.get("by_source", {}).items()]  # fmt: skip
    return Section("Hard negatives", paragraphs=[
        f"Model false positives (parent-sample LRGs, un-injected, scored >= {h['min_score_threshold']} by Gen5 in the Spark score stage) plus the real Galaxy Zoo DECaLS rings and Darg et al. mergers; "
        f"anything within {h['exclusion_radius_arcsec']}\" of a known lens dropped ({h['counts'].get('excluded_near_lens', 0)} here), duplicates "
        f"within the dedup radius merged ({h['counts'].get('merged_duplicates', 0)}). {h['n_total']} hard negatives in the lookup.",
        f"Join preview: {HARDNEG_MATCH_NOTE}. The real rings and mergers lie outside the mock sky, so only the model's own false "
        "positives can match here; on DR10 the same lookup is joined to real stamps.",
    ], tables=[
        ("Hard negatives by source", ["source", "loss weight", "in", "kept"], src_rows),
        ("Position join with this run's stamps", ["source", "lookup entries", "matched negatives", "matched positives", "unmatched"], join_rows),
    ])  # fmt: skip


def _change_verdict(diff: dict) -> str:
    ci = diff.get("interval")
    if ci is None or not np.isfinite(diff.get("value", np.nan)):
        return "n/a"
    if ci[1] < 0:
        return "lower (interval below 0)"
    if ci[0] > 0:
        return "higher (interval above 0)"
    return "no resolved change (interval spans 0)"


def _loop(summary: dict) -> Section:
    res = summary["results"]
    loop, mock, hard = res["loop"], res["mock_survey"]["lookalikes"], res["hard_negatives"]
    g5, g6, diff = loop["generations"]["gen5"], loop["generations"]["gen6"], loop["difference"]
    c = loop["counts"]
    fmt = lambda m: _fmt_value(m["value"]) + (f" {_interval(m['interval'])}" if m.get("interval") else "")  # noqa: E731
    keys = [("threshold", "score threshold at 50% completeness")]
    keys += [(k, f"contamination: {k.split(':', 1)[1]} (n = {c['lookalikes_by_type'].get(k.split(':', 1)[1], c['lookalikes'])})")
             for k in g5 if k.startswith("contamination:")]  # fmt: skip
    keys += [(k, k.replace("_", " ")) for k in g5 if k.startswith("tpr_at_fpr")]
    keys += [(k, "completeness, arc visibility " + k.split("vis_", 1)[1]) for k in g5 if k.startswith("completeness:")]
    rows = [[label, fmt(g5[k]), fmt(g6[k]), fmt(diff[k]), _change_verdict(diff[k]) if k != "threshold" else ""] for k, label in keys]
    gen6_train = res["retrain"].get("hard_negative_stamps") or {}
    overall = diff["contamination:all"]
    verdict = _change_verdict(overall)
    return Section("The sim-to-real loop: Gen5 -> mine -> Gen6 (SYNTHETIC)", paragraphs=[
        f"The mock survey carries {mock['n']} lens look-alikes ({', '.join(f'{k} {v}' for k, v in mock['by_type'].items())}); "
        f"{mock['n_heldout']} are held out (always in the test split) and the rest follow the HEALPix split. Gen5 trained on injections "
        "and controls only. The Spark score stage scored the un-injected parent sample "
        f"({hard['parent_scored']['n']} LRGs) with Gen5; its false positives >= {hard['min_score_threshold']} and the real ring and merger "
        f"catalogues made the lookup ({hard['n_total']} entries). Gen6 is the same model and schedule trained with the training split's "
        f"look-alike stamps ({gen6_train.get('n_hard', 'n/a')} in training, weight {gen6_train.get('weight', 'n/a')}) and the lookup.",
        f"Held-out test split: {c['injections']} injections, {c['controls']} controls, {c['lookalikes']} look-alikes. Contamination is "
        "the fraction of a type's look-alikes scoring at or above the threshold that recovers half the injections (each model its own "
        "threshold); tpr at fpr counts controls and look-alikes as negatives. Intervals: 95% bootstrap "
        f"({loop['n_bootstrap']} resamples, the same rows for both models, so the difference is paired).",
        f"Verdict on the loop: contamination of held-out look-alikes by Gen6 against Gen5 is {verdict} "
        f"({_fmt_value(overall['value'])} {_interval(overall.get('interval'))}). Nothing was tuned on the held-out set.",
    ], tables=[("Gen5 and Gen6 on held-out stamps", ["metric", "Gen5", "Gen6", "Gen6 - Gen5", "change"], rows)])  # fmt: skip


def _anchors(summary: dict, paths) -> Section:
    a = summary["results"]["anchors"]
    real, held, crit = a["real"], a["heldout"], a["criteria"]

    def gate_rows(m: dict, passed: dict, ci: dict | None = None) -> list[list]:
        def interval(key):
            return f"[{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if ci and key in ci and None not in ci[key] else "n/a"

        def verdict(value_key, criterion):  # a metric that could not be measured is n/a, not a failure
            return None if m[value_key] is None else passed[criterion]

        return [
            [f"recovery at {crit['score_threshold']} ({m['n_recovered_at_0p5']} of {m['n_known_lenses']})", m["recovery_rate_0p5"], interval("recovery_rate_0p5"),
             f">= {crit['min_recovery']}", verdict("recovery_rate_0p5", "min_recovery")],
            [f"contamination ({m['n_contaminated_at_0p5']} of {m['n_hard_negatives']})", m["contamination_rate_0p5"], interval("contamination_rate_0p5"),
             f"<= {crit['max_contamination']}", verdict("contamination_rate_0p5", "max_contamination")],
            ["score separation (median lens - median negative)", m["score_separation"], interval("score_separation"), f">= {crit['min_separation']}",
             verdict("score_separation", "min_separation")],
            ["AUROC", m["auroc_anchor"], interval("auroc_anchor"), f">= {crit['min_auroc']}", verdict("auroc_anchor", "min_auroc")],
            ["anchor gate", m["passes_anchor_gate"], "", "all four", m["passes_anchor_gate"]],
        ]  # fmt: skip

    header = ["metric", "value", "95% bootstrap CI", "criterion", "pass"]
    sec = Section("Anchors", paragraphs=[REAL_ANCHOR_STATEMENT])
    sec.tables.append(("Real anchors: the merged catalogues scored where real DR10 imaging is available offline", header, gate_rows(real["metrics"], real["criteria_passed"])))
    sec.tables.append((f"Anchor gates (dhs_spark.anchors.anchor_gates): {'PASSED' if real['anchor_gate_passed'] else 'not passed'}", GATE_HEADER, gate_table(real["gates"])))
    sec.tables.append(("Real lenses by grade", ["grade", "n", "recovered", "recovery rate", "top grade"],
                       [[k, v["n"], v["n_recovered"], v["recovery_rate"], _yes(v["top_grade"])] for k, v in real["per_grade"].items()]))  # fmt: skip
    sec.tables.append((f"Real DR10 candidate cutouts (centre {real['stamp_size']} px, the checkpoint's stamp size, of the 101-px cutouts)",
                       ["name", "catalogue", "RA", "Dec", "score", "arc SNR (visibility)", "recovered"],
                       [[s["name"], s["catalogue"], s["ra"], s["dec"], s["score"], s["arc_snr"], _yes(s["recovered"])] for s in real["scored"]]))  # fmt: skip
    vis = real["arc_visible"]
    sec.paragraphs.append(
        f"Of the {real['n_catalogue_rows']} rows of the merged catalogues (known lenses and hard negatives), {real['rejects']['by_reason'].get('no_cutout', 0)} "
        "have no offline DR10 cutout and hence no score (anchor_rejects.csv). "
        f"Arc visibility (dhs_spark.anchors.arc_visibility_snr) >= {vis['arc_snr_min']}: {vis['n_visible']} of {vis['n_lenses_with_cutout']} scored lenses."
    )
    same = held["same_hosts_training_galaxies"]
    sec.paragraphs.append(
        f"Held-out injected anchor set: the {held['n_injections']} test-split injections re-made with galaxies never used in training "
        "(same lens, source magnitude, colours and size; a held-out galaxy's light profile) "
        f"({', '.join(held['galaxies_used'])}), against the {held['metrics']['n_hard_negatives']} test-split controls as negatives "
        f"(rejects: {held['rejects'] or 'none'}). For comparison, the same hosts with the training galaxies: recovery "
        f"{same['recovery_rate_0p5']:.3f}, AUROC {same['auroc_anchor']:.3f}. A large gap would mean the model learnt the training galaxies, not arcs."
    )
    sec.tables.append(("Held-out injected anchor set (SYNTHETIC hosts, held-out real galaxies)", header, gate_rows(held["metrics"], held["criteria_passed"], held["bootstrap_ci"])))
    for name, caption in (("score_histograms.png", "Anchor score histograms (real candidates; no hard negative has an offline image)"),
                          ("gallery_lowest_lenses.png", "The real DR10 candidates, lowest score first")):  # fmt: skip
        path = paths.anchors / "real" / name
        if path.exists():
            sec.images.append((caption, file_data_uri(path)))
    return sec


def _realism(summary: dict) -> Section:
    r = summary["results"]["realism"]
    sets, probe = r["arcs"]["sets"], r["probe"]

    def stat(d, key):
        v = d.get(key) or {}
        return "n/a" if not v.get("n") else f"{v['median']:.2f} ({v['p10']:.2f} - {v['p90']:.2f}), n={v['n']}"

    def table(sets: dict) -> list[list]:
        return [[name, d["n"], stat(d, "arc_snr"), _fmt_value(d.get("fraction_below_5")), stat(d, "g_r"), stat(d, "r_z"),
                 stat(d, "input_g_r") if "input_g_r" in d else ""] for name, d in sets.items()]  # fmt: skip

    header = ["set", "stamps", "arc SNR", "fraction below 5", "g-r (measured)", "r-z (measured)", "g-r (injected truth)"]
    p, pm, rec = probe["probe"], probe["probe_matched"], probe["recovery"]
    sec = Section("Injection realism: the same measurements on real lenses and on injections", paragraphs=[
        "One estimator (dhs_spark.realism.measure_arc) on every set: arc visibility (largest 45-degree sector SNR in the 0.8\"-3.0\" "
        "annulus after a ring host model) and host-subtracted arc colours where the arc is detected. dr10_candidates: the six real DR10 "
        "cutouts; ps1_sled: real SLED lenses in PS1 (shallower, 0.25\"/px: colours comparable, visibility values not); injected and controls: "
        "this run's stamps. The colour estimator reads arcs ~0.1 mag redder than they are (measured on injected arcs; realism.py).",
        f"Linear probe: a logistic regression on the trained model's penultimate features separates the {p.get('n_real')} real DR10 "
        f"candidates from {p.get('n_injected')} test-split injections at AUC {_fmt_value(p.get('auc'))} (bootstrap interval "
        f"{_interval(p.get('interval'))}, permutation p {_fmt_value(p.get('p_value'))}); matched to the real lenses' arc visibility, "
        f"{_fmt_value(pm.get('auc'))} ({_interval(pm.get('interval'))}). {p.get('n_real')} real lenses are far too few for a verdict: a "
        "bootstrap over a handful of points cannot show how the AUC would vary with another handful. And here the injections sit on MOCK hosts (Gaussian PSF, drawn noise "
        "and neighbours), so a high AUC measures the mock survey as much as the arcs. The gate means something on real DR10 stamps "
        "with hundreds of confirmed lenses: run `dhs realism probe --known-lenses ... --cutout-service-url ...` where the service is reachable.",
    ])  # fmt: skip
    sec.tables.append(("Arc visibility and colours by set (dhs realism arcs): median (10% - 90%)", header, table(sets)))
    d4 = summary["results"]["spark_pipeline"]["gates"].get("realism")
    if d4:
        sec.tables.append((f"The same estimator in the 4d report (its own sample, up to {d4['max_stamps_per_set']} stamps per set)", header, table(d4["sets"])))
    sec.tables.append(("Realism gates (linear probe, bright-arc recall gap)", GATE_HEADER, gate_table(probe["gates"])))
    sec.tables.append(("Recall at the score threshold", ["set", "n", "recall"],
                       [[k, v.get("n"), _fmt_value(v.get("recall"))] for k, v in rec.items() if isinstance(v, dict) and "recall" in v]))  # fmt: skip
    return sec


def _outputs(paths) -> Section:
    rel = lambda p: str(p.relative_to(paths.root))  # noqa: E731
    rows = [
        [rel(paths.mock), "mock survey: coadd/<bri>/<brick>/legacysurvey-*.fits.fz, survey-bricks-mock.csv, sweep-mock.parquet"],
        [rel(paths.cosmos), "COSMOS libraries: cosmos_all.h5, cosmos_train.h5 (pipeline), cosmos_heldout.h5 (held-out anchors)"],
        [rel(paths.catalogs), "known_lenses_merged.parquet, hard_negatives_merged.parquet, catalog_summary.json, *_crossmatch.parquet"],
        [rel(paths.experiment), "Spark phase 4: phase4a_manifest/, phase4c_stamps/stamps/split=*/ and rejects/, phase4d_gates/gates.json|md"],
        [rel(paths.training_view), "the stamps with split as a column, one file per split (trainer input)"],
        [rel(paths.train), "best.pt, best.safetensors, last.pt, metrics.json, config.yaml"],
        [rel(paths.scores), "task_id, ra, dec, label, score of every stamp"],
        [rel(paths.hardneg), "hard_negatives.parquet, hard_negative_lookup.parquet"],
        [rel(paths.train_gen6), "Gen6: best.pt, metrics.json, config.yaml (with the look-alikes and the lookup)"],
        [rel(paths.parent_scores), "Gen5 scores of the un-injected parent sample (Spark score stage)"],
        [rel(paths.anchors), "real/anchor_metrics.json, anchor_report.md, anchor_scores.parquet, PNGs"],
        [rel(paths.realism), "arcs/arcs_summary.json|md, arcs.parquet (one row per stamp); probe/probe.json, probe_report.md, probe_rows.parquet"],
        [rel(paths.logs), "spark_pipeline.log (full spark-submit output)"],
        ["summary.json", "every number of this report (results), stage times, run details"],
        [".stages/", "one marker per finished stage (a rerun reuses them; --force redoes)"],
    ]
    return Section("Where the outputs are", tables=[(f"Under {paths.root}", ["path", "content"], rows)])


def write_demo_report(paths, summary: dict):
    """Write ``paths.report`` from ``summary`` (and the run's files for the figures)."""
    sections = [
        _overview(summary),
        _timings(summary),
        _inputs(summary, paths),
        _gallery(summary, paths),
        _gates(summary),
        _performance(summary),
        _completeness(summary),
        _hard_negatives(summary),
        _loop(summary),
        _anchors(summary, paths),
        _realism(summary),
        _outputs(paths),
    ]
    run = summary["run"]
    subtitle = f"profile {run['profile']['name']}, seed {run['seed']}, finished {run['finished_at']}, git {str((run['git'] or {}).get('git_commit'))[:10]}"
    return write_report(paths.report, "Dark Halo Scope: end-to-end demo", sections, subtitle)
