"""`echo-ray eval` / echo_ray.eval.evaluate on the tiny checkpoint and a phantom-derived split.

The split is built the way the normalization pipeline writes it (OUTPUT_SCHEMA Parquet under
<data>/<split>/), from the phantom adapter's records standardized by the rules engine, so the
reader, the planner, the decoders and every metric run for real. Decoding is kept short (few
studies, max_new_tokens 16, METEOR off) to fit the test budget.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from echo_ray.cli import main
from echo_ray.config import DecodeConfig, EvalConfig, EvalRow, PromptConfig, load_config
from echo_ray.errors import InputError
from echo_ray.eval.dataset import load_eval_split
from echo_ray.eval.evaluate import evaluate_model, get_encoder
from echo_ray.eval.plan import plan_rows

N_STUDIES = 3
METRIC_KEYS = ("bleu1", "bleu4", "rouge_l", "cider", "semscore", "micro_f1", "macro_f1", "complete_fraction",
               "repeated_ngram_rate", "truncated_fraction", "empty_fraction", "forwards_per_report",
               "tokens_per_forward", "tokens_per_s", "latency_p50_s", "latency_p95_s")  # fmt: skip


def _rows_from_phantom(phantom_dir: Path, n: int) -> list[dict]:
    from echo_ray.config import SourceSpec
    from echo_ray.data.sources.phantom import read_task
    from echo_ray.engines.rules import standardize_text
    from echo_ray.report import format_report

    rows = []
    for rec in read_task(SourceSpec("phantom", str(phantom_dir)), "0-999")[:n]:
        std = standardize_text(rec["raw_findings"], rec["raw_impression"])
        report = format_report(std["findings"], std["impression"], "en")
        rows.append({**rec, **std, "language": "en", "report": report, "labels": {}})
    return rows


def write_dataset(root: Path, splits: dict[str, list[dict]]) -> Path:
    """A normalized dataset: manifest.json + <split>/part-00000.parquet in OUTPUT_SCHEMA."""
    from echo_ray.data.schema import OUTPUT_SCHEMA, to_table

    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"format": "echo_ray.normalized/1"}), encoding="utf-8")
    for split, rows in splits.items():
        (root / split).mkdir(exist_ok=True)
        pq.write_table(to_table(rows, OUTPUT_SCHEMA), root / split / "part-00000.parquet")
    return root


@pytest.fixture(scope="module")
def phantom_rows(phantom_dir) -> list[dict]:
    return _rows_from_phantom(phantom_dir, N_STUDIES + 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, phantom_rows) -> Path:
    zh = {**phantom_rows[0], "study_id": "zh-0", "language": "zh",
          "report": "所见：心影大小正常。 结论：无急性病变。"}  # fmt: skip
    return write_dataset(tmp_path_factory.mktemp("normalized"), {"eval": phantom_rows + [zh], "train": phantom_rows})


def _eval_args(ckpt, data, out, *extra) -> list[str]:
    return ["eval", "--model", str(ckpt), "--data", str(data), "--split", "eval", "--out", str(out),
            "--max-reports", str(N_STUDIES), "--batch-size", str(N_STUDIES), "--max-new-tokens", "16", *extra]  # fmt: skip


def test_eval_cli_writes_table_plot_and_rows(tiny_ckpt_dir, dataset, tmp_path, capsys) -> None:
    out = tmp_path / "eval_out"
    rc = main(_eval_args(tiny_ckpt_dir, dataset, out, "--mode", "onestep", "--mode", "ar"))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| name |" in printed
    for name in ("table.md", "table.json", "tradeoff.png", "details.json", "echo_config.yaml"):
        assert (out / name).is_file(), name
    payload = json.loads((out / "table.json").read_text())
    rows = {r["name"]: r for r in payload["rows"]}
    folder = Path(tiny_ckpt_dir).name
    assert set(rows) == {f"{folder} onestep B=8", f"{folder} AR"}
    one, ar = rows[f"{folder} onestep B=8"], rows[f"{folder} AR"]
    for row in (one, ar):
        assert row["n"] == N_STUDIES
        for key in METRIC_KEYS:
            assert isinstance(row[key], (int, float)), key
        assert "meteor" not in row  # off unless asked for
    # 16 new tokens (random weights never stop early): AR takes one forward per token; one-step
    # takes one per block (fused cache), at most prefill + 3 blocks when the prompt tail shares one.
    assert ar["forwards_per_report"] == 16 and ar["tokens_per_forward"] == 1.0
    assert one["forwards_per_report"] <= 4 and one["tokens_per_forward"] >= 4.0
    assert one["block_size"] == 8 and ar["block_size"] is None
    assert payload["not_plotted"] == []
    for row in (one, ar):  # grounding columns and intervals (echo_ray.eval.grounding, default on)
        lo, hi = row["micro_f1_ci95"]
        assert lo <= row["micro_f1"] <= hi and len(row["rouge_l_ci95"]) == 2
        assert row["micro_f1_drop_swapped"] == pytest.approx(row["micro_f1"] - row["micro_f1_swapped_images"])
        assert 0 <= row["reports_changed_by_swap"] <= 1 and 0 < row["distinct_report_fraction"] <= 1
    with Image.open(out / "tradeoff.png") as im:
        im.verify()
    with Image.open(out / "tradeoff.png") as im:
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
    md = (out / "table.md").read_text()
    assert "forwards_per_report" in md and f"{folder} AR" in md
    preds = (out / "predictions" / f"{folder}_AR.jsonl").read_text().splitlines()
    assert len(preds) == N_STUDIES and json.loads(preds[0])["study_id"] == "phantom-000-000000"
    assert json.loads(preds[0])["swapped_images_from"] != "phantom-000-000000"
    details = json.loads((out / "details.json").read_text())
    assert details["rows_per_language"] == {"en": N_STUDIES + 1, "zh": 1}
    assert "per_finding" in details["rows"][f"{folder} AR"]["clinical"]
    assert sorted(details["rows"][f"{folder} AR"]["grounding"]["swap_permutation"]) == list(range(N_STUDIES))
    saved = load_config(out / "echo_config.yaml")
    assert saved.eval.max_reports == N_STUDIES and saved.decode.max_new_tokens == 16


def test_evaluate_model_multistep_counts_forwards(tiny_ckpt_dir, dataset) -> None:
    decode = DecodeConfig(mode="multistep", steps=4, max_new_tokens=8)
    cfg = EvalConfig(language="en", max_reports=2, batch_size=2)
    row = evaluate_model(str(tiny_ckpt_dir), str(dataset), "eval", cfg, decode, PromptConfig(), label="teacher S=4",
                         encoder=get_encoder(""))  # fmt: skip
    assert row["name"] == "teacher S=4" and row["mode"] == "multistep" and row["steps"] == 4
    assert row["n"] == 2
    # Each block of 8 needs 4 committing steps (2 tokens per step) -> about 4 forwards per block.
    assert row["forwards_per_report"] >= 4
    assert 0 < row["tokens_per_forward"] <= 2.0 + 1e-9


# ---- bad input: each fails with one clear error before any decoding -------------------------------


def _fails(args: list[str], capsys, match: str, out: Path) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert err.count("\n") == 1  # one line
    assert not (out / "table.md").exists()


def test_missing_data_and_split(tiny_ckpt_dir, dataset, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    _fails(_eval_args(tiny_ckpt_dir, tmp_path / "nope", out), capsys, "dataset not found", out)
    args = _eval_args(tiny_ckpt_dir, dataset, out)
    args[args.index("--split") + 1] = "test"
    _fails(args, capsys, "split 'test' not found", out)


def test_empty_split_and_absent_language(tiny_ckpt_dir, dataset, tmp_path, capsys) -> None:
    empty = write_dataset(tmp_path / "empty", {"eval": []})
    out = tmp_path / "o"
    _fails(_eval_args(tiny_ckpt_dir, empty, out), capsys, "is empty (0 rows)", out)
    only_en = write_dataset(tmp_path / "en_only", {"eval": _rows_only(dataset, "en")})
    _fails(_eval_args(tiny_ckpt_dir, only_en, out, "--language", "zh"), capsys, "has no 'zh' rows", out)


def _rows_only(dataset: Path, language: str) -> list[dict]:
    rows = pq.read_table(dataset / "eval" / "part-00000.parquet").to_pylist()
    return [{**r, "labels": dict(r["labels"])} for r in rows if r["language"] == language]


def test_missing_references(tiny_ckpt_dir, dataset, tmp_path, capsys) -> None:
    rows = _rows_only(dataset, "en")
    rows[1]["report"] = "Findings:  Impression: "
    rows[2]["report"] = ""
    bad = write_dataset(tmp_path / "bad", {"eval": rows})
    out = tmp_path / "o"
    _fails(_eval_args(tiny_ckpt_dir, bad, out), capsys, "2 row(s) have an empty reference report", out)


def test_missing_image_file(tiny_ckpt_dir, dataset, tmp_path, capsys) -> None:
    rows = _rows_only(dataset, "en")
    rows[0]["images"] = [{"path": str(tmp_path / "gone.png"), "view": "PA"}]
    out = tmp_path / "o"
    _fails(_eval_args(tiny_ckpt_dir, write_dataset(tmp_path / "d", {"eval": rows}), out), capsys,
           "image file(s) not found", out)  # fmt: skip


def test_block_size_mismatch(tiny_ckpt_dir, dataset, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    _fails(_eval_args(tiny_ckpt_dir, dataset, out, "--block-size", "4"), capsys,
           "differs from the checkpoint's trained block size 8", out)  # fmt: skip


def test_model_language_mismatch(tiny_ckpt_dir, dataset, tmp_path, capsys) -> None:
    ckpt = Path(shutil.copytree(tiny_ckpt_dir, tmp_path / "en_model"))
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["echo_languages"] = ["en"]  # what a training stage records for an English-only corpus
    (ckpt / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "o"
    _fails(_eval_args(ckpt, dataset, out, "--language", "zh"), capsys, "trained on en reports", out)
    split = load_eval_split(str(dataset), "eval", "en", 2)
    planned = plan_rows(EvalConfig(model=str(ckpt)), DecodeConfig(), load_config().model, split.language)
    assert planned[0].decode.block_size == 8


def test_rows_and_names(tiny_ckpt_dir, dataset, capsys) -> None:
    same = EvalRow(model=str(tiny_ckpt_dir), mode="onestep")
    cfg = EvalConfig(rows=[same, same])
    with pytest.raises(InputError, match="share the name"):
        plan_rows(cfg, DecodeConfig(), load_config().model, "en")
    cfg = replace(cfg, rows=[EvalRow(model=str(tiny_ckpt_dir), mode="multistep", block_size=4, override_block=True)])
    (row,) = plan_rows(cfg, DecodeConfig(), load_config().model, "en")
    assert row.decode.block_size == 4 and row.decode.steps == 4 and row.name.endswith("multistep B=4 S=4")
    assert main(["eval", "--model", str(tiny_ckpt_dir), "--mode", "ar", "--mode", "onestep", "--name", "x",
                 "--data", str(dataset)]) == 2  # fmt: skip
    assert "1 --name value(s) for 2 row(s)" in capsys.readouterr().err


def test_ray_actor_pool_decodes_like_local(tiny_ckpt_dir, dataset, ray_cluster) -> None:
    from echo_ray.eval.evaluate import run_evaluation

    spec = [EvalRow(name="echo", model=str(tiny_ckpt_dir), mode="onestep")]
    decode = DecodeConfig(max_new_tokens=16)
    local_cfg = EvalConfig(max_reports=2, batch_size=2)
    local = run_evaluation(spec, str(dataset), "eval", local_cfg, decode, PromptConfig(), encoder=get_encoder(""))
    pooled = run_evaluation(spec, str(dataset), "eval", replace(local_cfg, num_actors=1, num_cpus_per_actor=0.5),
                            decode, PromptConfig(), encoder=get_encoder(""))  # fmt: skip
    keys = ("study_id", "text", "tokens", "forward_passes", "hit_max_length")
    assert [{k: r[k] for k in keys} for r in pooled.predictions["echo"]] == [
        {k: r[k] for k in keys} for r in local.predictions["echo"]
    ]
    assert pooled.rows[0]["forwards_per_report"] == local.rows[0]["forwards_per_report"]


def test_split_and_images_on_s3(moto_s3, dataset, tmp_path) -> None:
    """The reader takes s3:// datasets and images (a local moto server stands in for S3)."""
    import boto3

    from echo_ray.eval.dataset import load_study_images

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="evalbucket")
    rows = _rows_only(dataset, "en")[:2]
    local_png = Path(rows[0]["images"][0]["path"])
    s3.upload_file(str(local_png), "evalbucket", "images/a.png")
    rows[0]["images"] = [{"path": "s3://evalbucket/images/a.png", "view": "PA"}]
    local = write_dataset(tmp_path / "ds", {"eval": rows})
    for f in ("manifest.json", "eval/part-00000.parquet"):
        s3.upload_file(str(local / f), "evalbucket", f"normalized/{f}")
    split = load_eval_split("s3://evalbucket/normalized", "eval", "en", 5)
    assert [s.study_id for s in split.studies] == [r["study_id"] for r in rows]
    (img,) = load_study_images(split.studies[0])
    assert img.mode == "RGB" and img.size == Image.open(local_png).size
    with pytest.raises(InputError, match="split 'dcd' not found"):
        load_eval_split("s3://evalbucket/normalized", "dcd", "en", 5)


def test_write_evaluation_second_table(tiny_ckpt_dir, dataset, tmp_path) -> None:
    """A named second table (the demo's ablation) sits beside the main one without overwriting it."""
    from echo_ray.eval.evaluate import run_evaluation, write_evaluation

    run = run_evaluation([EvalRow(name="base", model=str(tiny_ckpt_dir), mode="onestep")], str(dataset), "eval",
                         EvalConfig(max_reports=1, grounding=False), DecodeConfig(max_new_tokens=8), PromptConfig(),
                         encoder=get_encoder(""))  # fmt: skip
    paths = write_evaluation(run, tmp_path, "Ablation", name="ablation")
    assert {p.name for p in tmp_path.iterdir()} == {"ablation.md", "ablation.json", "ablation_tradeoff.png",
                                                     "ablation_details.json", "ablation_predictions"}  # fmt: skip
    assert paths["markdown"].read_text().startswith("## Ablation")
    assert (tmp_path / "ablation_predictions" / "base.jsonl").is_file()


def test_renamed_rows_and_merge_runs_reuse_a_row_under_another_name() -> None:
    """The demo's ablation table shows two main-table rows under its own labels without decoding them again."""
    from echo_ray.eval.split import EvalSplit, EvalStudy
    from echo_ray.eval.evaluate import EvalRun, merge_runs, renamed_rows

    def split(ids):
        return EvalSplit("d", "eval", "en", [EvalStudy(i, "p", "en", "r", ()) for i in ids], len(ids), len(ids))

    main_run = EvalRun([{"name": "A", "micro_f1": 0.5}, {"name": "B", "micro_f1": 0.7}], {"A": {"x": 1}, "B": {"x": 2}},
                       split(["s1", "s2"]), {"A": [{"text": "a"}], "B": [{"text": "b"}]})  # fmt: skip
    raw = EvalRun([{"name": "B raw", "micro_f1": 0.1}], {"B raw": {"x": 3}}, split(["s1", "s2"]), {"B raw": []})
    merged = merge_runs(renamed_rows(main_run, {"B": "B normalized"}), raw)
    assert [r["name"] for r in merged.rows] == ["B normalized", "B raw"]
    assert merged.rows[0]["micro_f1"] == 0.7 and merged.details["B normalized"] == {"x": 2}
    assert merged.predictions["B normalized"] == [{"text": "b"}] and main_run.rows[1]["name"] == "B"
    with pytest.raises(KeyError, match="not in this evaluation"):
        renamed_rows(main_run, {"C": "c"})
    with pytest.raises(ValueError, match="different study lists"):
        merge_runs(main_run, EvalRun([], {}, split(["s9"])))
    with pytest.raises(ValueError, match="rows named"):
        merge_runs(main_run, main_run)
