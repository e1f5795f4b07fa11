"""ONNX export (parity, fp16, metadata), TensorRT availability message, repository assembly and its refusals."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import triton_util as tu

from exdd.export.onnx_export import TOLERANCE, export_onnx, generated_images, onnx_session, parity
from exdd.export.tensorrt import which_builder
from exdd.serving.configs import Serving
from exdd.serving.repository import RepositoryError, assemble
from exdd_scoring.onnx_metadata import read_features


def model_config(path):
    """A config.pbtxt parsed as Triton's ModelConfig (a malformed file fails the parse)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    with open(path) as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def test_committed_templates_are_a_triton_repository_and_export_fills_only_what_varies():
    """model_repository/ holds config.pbtxt of all four models; assembly changes sizes, batching, parameters."""
    from exdd.serving.configs import Serving, ensemble_config, features_config, preprocess_config, scorer_config
    from exdd_scoring import FeatureSpec

    src = os.path.join(tu.ROOT, "model_repository")
    names = ("exdd", "exdd_preprocess", "exdd_features", "exdd_scorer")
    t = {n: model_config(os.path.join(src, n, "config.pbtxt")) for n in names}
    assert t["exdd"].platform == "ensemble" and t["exdd_features"].backend == "python" == t["exdd_scorer"].backend
    assert t["exdd_preprocess"].backend == "python"
    assert [s.model_name for s in t["exdd"].ensemble_scheduling.step] == [
        "exdd_preprocess",
        "exdd_features",
        "exdd_scorer",
    ]
    assert list(t["exdd_scorer"].input[0].dims) == [79, 28, 256] and list(t["exdd"].input[0].dims) == [-1, -1, 3]
    assert [(i.name, i.optional) for i in t["exdd"].input] == [("IMAGE", True), ("IMAGE_BYTES", True)]
    assert list(t["exdd_preprocess"].output[0].dims) == [632, 224, 3]
    assert "threshold" not in t["exdd_scorer"].parameters
    f = FeatureSpec.from_dict(tu.extractor()[1])
    got = {
        "exdd": ensemble_config(f, Serving()),
        "exdd_features": features_config(f, "python", Serving()),
        "exdd_scorer": scorer_config(f, "exdd", None, Serving()),
        "exdd_preprocess": preprocess_config(f, Serving()),
    }
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for name, text in got.items():
        c = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert [o.name for o in c.output] == [o.name for o in t[name].output]
        assert [i.name for i in c.input] == [i.name for i in t[name].input]
        if name not in ("exdd", "exdd_preprocess"):
            assert list(c.model_warmup[0].inputs[c.input[0].name].dims) == list(c.input[0].dims)
    pre = text_format.Parse(got["exdd_preprocess"], model_config_pb2.ModelConfig())
    assert list(pre.output[0].dims) == [*f.input_size, 3] == list(pre.model_warmup[0].inputs["IMAGE"].dims)
    gpu = text_format.Parse(preprocess_config(f, Serving("gpu", 2)), model_config_pb2.ModelConfig())
    assert [(g.kind, g.count) for g in gpu.instance_group] == [(gpu.instance_group[0].KIND_CPU, 2)]  # decoding: CPU
    sc = text_format.Parse(got["exdd_scorer"], model_config_pb2.ModelConfig())
    assert "threshold" not in sc.parameters and list(sc.input[0].dims) == [*f.grid, f.d]
    sc = text_format.Parse(scorer_config(f, "patchcore", 0.5, Serving()), model_config_pb2.ModelConfig())
    assert sc.parameters["threshold"].string_value == "0.5" and sc.parameters["mode"].string_value == "patchcore"


def test_cli_export_onnx_from_banks_passes_parity_and_records_features():
    out = os.path.join(tu.workdir(), "cli.onnx")
    p = tu.exdd_cli(
        "export", "onnx", "--banks", tu.banks(), "--out", out, "--parity-images", tu.dataset(), "--parity-count", "3"
    )
    assert p.returncode == 0, p.stderr
    assert "parity fp32: ok on 3 images" in p.stdout
    with open(os.path.join(tu.banks(), "manifest.json")) as f:
        bank_features = json.load(f)["features"]
    stored = read_features(out)
    for key in ("weights", "input_size", "grid", "d", "projection_seed", "projection_sha256"):
        assert stored[key] == bank_features[key]


def test_onnx_has_dynamic_batch_and_matches_torch():
    sess = onnx_session(tu.onnx_fp32())
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    assert (inp.name, inp.type, out.name, out.type) == ("IMAGE", "tensor(uint8)", "FEATURES", "tensor(float)")
    assert not isinstance(inp.shape[0], int)  # symbolic batch axis
    grid = tu.extractor()[1]["grid"]
    for b in (1, 3):
        y = sess.run(None, {"IMAGE": generated_images(b, tu.INPUT_HW)})[0]
        assert y.shape == (b, grid[0], grid[1], tu.D)
    res = parity(tu.onnx_fp32(), tu.extractor()[0], tu.sample_images(3), "fp32")
    assert res.ok and res.rel <= TOLERANCE["fp32"]


def test_fp16_keeps_uint8_in_float32_out_within_looser_tolerance():
    model, info = tu.extractor()
    path = export_onnx(model, info, os.path.join(tu.workdir(), "f16.onnx"), "fp16")
    sess = onnx_session(path)
    assert sess.get_inputs()[0].type == "tensor(uint8)" and sess.get_outputs()[0].type == "tensor(float)"
    res = parity(path, model, tu.sample_images(3), "fp16")
    assert res.ok, res.describe()
    assert 0 < res.rel  # really half precision inside
    assert os.path.getsize(path) < 0.6 * os.path.getsize(tu.onnx_fp32())
    assert read_features(path) == info


def plain_onnx(path):
    """A loadable ONNX file (IMAGE -> FEATURES identity) that exdd export did not write: no exdd metadata."""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, *tu.INPUT_HW, 3]) for n in ("IMAGE", "FEATURES")]
    graph = helper.make_graph([helper.make_node("Identity", ["IMAGE"], ["FEATURES"])], "plain", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_an_onnx_without_exdd_metadata_is_refused_by_every_reader_naming_the_file(tmp_path):
    """Writer and readers share one contract (exdd_scoring.onnx_metadata): export, offline --extractor, repository."""
    from exdd_scoring.onnx_metadata import FEATURES_KEY, OnnxMetadataError, features_of, metadata_entries

    assert features_of(metadata_entries({"d": 8}, "fp16"), "x") == {"d": 8}
    path = plain_onnx(str(tmp_path / "plain.onnx"))
    with pytest.raises(OnnxMetadataError, match=f"plain.onnx: no '{FEATURES_KEY}' in the ONNX metadata"):
        read_features(path)
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(OnnxMetadataError, match="text.onnx: not a loadable ONNX model"):
        read_features(str(tmp_path / "text.onnx"))
    want = f"{path}: no '{FEATURES_KEY}' in the ONNX metadata"
    for args in (
        ["export", "repository", "--onnx", path, "--banks", tu.banks(), "--out", str(tmp_path / "r")],
        ["export", "tensorrt", path, "--out", str(tmp_path / "e.plan")] if which_builder() else [],
        [
            "offline",
            "build",
            tu.dataset(),
            "--out",
            str(tmp_path / "b"),
            "--weights",
            tu.WEIGHTS,
            "--input-size",
            f"{tu.INPUT_HW[0]}x{tu.INPUT_HW[1]}",
            "--d",
            str(tu.D),
            "--extractor",
            path,
        ],
    ):
        if not args:
            continue
        p = tu.exdd_cli(*args)
        assert p.returncode != 0 and want in p.stderr, (args[:2], p.stderr[-500:])
    assert not (tmp_path / "r").exists() and not (tmp_path / "b").exists()


def test_parity_fails_for_an_extractor_with_other_features():
    from exdd.offline.features import build_extractor

    other, _ = build_extractor(tu.WEIGHTS, tu.D, 1, tu.INPUT_HW)  # other projection seed
    res = parity(tu.onnx_fp32(), other, tu.sample_images(2), "fp32")
    assert not res.ok and "FAILED" in res.describe()


@pytest.mark.skipif(which_builder() is not None, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_says_so_cleanly():
    p = tu.exdd_cli("export", "tensorrt", tu.onnx_fp32(), "--out", os.path.join(tu.workdir(), "x.plan"))
    assert p.returncode != 0
    assert "TensorRT is not available here" in p.stderr and "Traceback" not in p.stderr + p.stdout
    assert not os.path.exists(os.path.join(tu.workdir(), "x.plan"))


@pytest.mark.gpu
def test_tensorrt_engine_builds_on_gpu():
    if which_builder() is None or shutil.which("nvidia-smi") is None:
        pytest.skip("needs a GPU and TensorRT")
    from exdd.export.tensorrt import build_engine

    out = build_engine(tu.onnx_fp32(), os.path.join(tu.workdir(), "f.plan"), tu.INPUT_HW, 4)
    assert os.path.getsize(out) > 1_000_000


def test_repository_layout_and_configs():
    repo = tu.repository("python")
    f = tu.extractor()[1]
    for rel in (
        "README.md",
        "exdd/config.pbtxt",
        "exdd/1",
        "exdd_features/config.pbtxt",
        "exdd_features/1/model.py",
        "exdd_features/1/model.onnx",
        "exdd_scorer/config.pbtxt",
        "exdd_scorer/1/model.py",
        "exdd_scorer/1/exdd_scoring/scorer.py",
        "exdd_scorer/1/banks/manifest.json",
        "exdd_scorer/1/features.json",
        "exdd_features/1/features.json",
        "exdd_preprocess/config.pbtxt",
        "exdd_preprocess/1/model.py",
        "exdd_preprocess/1/exdd_scoring/picture.py",
    ):
        assert os.path.exists(os.path.join(repo, rel)), rel
    with open(os.path.join(repo, "exdd_scorer/1/features.json")) as fh:
        assert json.load(fh) == f
    ens = model_config(os.path.join(repo, "exdd/config.pbtxt"))
    assert ens.platform == "ensemble" and list(ens.input[0].dims) == [-1, -1, 3]
    pre = model_config(os.path.join(repo, "exdd_preprocess/config.pbtxt"))
    assert [list(o.dims) for o in pre.output if o.name == "MODEL_IMAGE"] == [[128, 64, 3]]
    assert not os.path.islink(os.path.join(repo, "exdd_preprocess/1/exdd_scoring"))  # a real copy
    assert [list(o.dims) for o in ens.output if o.name == "ANOMALY_MAP"] == [[128, 64]]
    sc = model_config(os.path.join(repo, "exdd_scorer/config.pbtxt"))
    assert sc.max_batch_size == 8 and sc.HasField("dynamic_batching") and len(sc.model_warmup) == 1
    assert list(sc.input[0].dims) == [f["grid"][0], f["grid"][1], tu.D] and "mode" in sc.parameters
    from exdd_scoring import FeatureSpec

    assert FeatureSpec.from_json(sc.parameters["features"].string_value) == FeatureSpec.from_dict(f)
    from exdd_scoring.bank import sha256_file

    readme = open(os.path.join(repo, "README.md")).read()
    assert sha256_file(os.path.join(tu.banks(), "manifest.json")) in readme
    # the scorer imports only numpy, the backend utilities and its own package
    src = open(os.path.join(repo, "exdd_scorer/1/model.py")).read()
    imports = {ln.split()[1].split(".")[0] for ln in src.splitlines() if ln.startswith(("import ", "from "))}
    assert imports <= {"json", "math", "os", "sys", "numpy", "triton_python_backend_utils", "exdd_scoring"}


def test_each_python_model_folder_holds_exactly_the_scoring_modules_its_model_imports():
    """Read from the imports (transitively within exdd_scoring): the preprocessor carries no bank or scorer code,
    the scorer no ONNX runtime or Pillow code; test_triton loads every one of these folders on a real server."""
    from exdd.serving.model_files import scoring_modules

    repo = tu.repository("python")
    held = {}
    for model in ("exdd_preprocess", "exdd_features", "exdd_scorer"):
        v = os.path.join(repo, model, "1")
        files = {n[:-3] for n in os.listdir(os.path.join(v, "exdd_scoring")) if n.endswith(".py")}
        assert files == scoring_modules(open(os.path.join(v, "model.py")).read()), model
        held[model] = files
    assert held["exdd_preprocess"] == {"__init__", "picture"}
    assert {"runtimes", "onnx_metadata", "batching"} <= held["exdd_features"]
    assert not {"scorer", "bank", "picture"} & held["exdd_features"]
    assert {"scorer", "scores", "bank", "batching", "model_names"} <= held["exdd_scorer"]
    assert not {"picture", "runtimes", "onnx_metadata"} & held["exdd_scorer"]


def test_a_model_importing_the_bare_scoring_package_is_refused_by_name():
    from exdd.serving.model_files import ModelFilesError, scoring_modules

    with pytest.raises(ModelFilesError, match="`import exdd_scoring` alone"):
        scoring_modules("import numpy\nimport exdd_scoring\n", "bad/model.py")
    with pytest.raises(ModelFilesError, match="exdd_scoring.nowhere, which is not a module"):
        scoring_modules("from exdd_scoring.nowhere import x\n", "bad/model.py")
    assert scoring_modules("def f():\n    from exdd_scoring import Scorer\n") >= {"__init__", "scorer", "bank"}


def test_repository_backends_and_kinds(tmp_path):
    onnx, banks = tu.onnx_fp32(), tu.banks()
    r = assemble(onnx, banks, str(tmp_path / "ort"), "onnxruntime", Serving("gpu", 2, 4, 100))
    cfg = model_config(os.path.join(r.path, "exdd_features/config.pbtxt"))
    assert cfg.platform == "onnxruntime_onnx" and not cfg.backend and cfg.max_batch_size == 4
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(cfg.instance_group[0].KIND_GPU, 2)]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100 and "intra_op_threads" not in cfg.parameters
    assert not os.path.exists(os.path.join(r.path, "exdd_features/1/model.py"))
    sc = model_config(os.path.join(r.path, "exdd_scorer/config.pbtxt"))
    assert sc.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    with pytest.raises(RepositoryError, match="needs --engine"):
        assemble(onnx, banks, str(tmp_path / "trt"), "tensorrt_plan")
    plan = tmp_path / "fake.plan"
    plan.write_bytes(b"engine bytes")
    r = assemble(onnx, banks, str(tmp_path / "trt"), "tensorrt_plan", engine_path=str(plan))
    assert model_config(os.path.join(r.path, "exdd_features/config.pbtxt")).platform == "tensorrt_plan"
    assert os.path.isfile(os.path.join(r.path, "exdd_features/1/model.plan"))
    with pytest.raises(RepositoryError, match="not empty"):
        assemble(onnx, banks, r.path, "python")


def test_repository_refuses_banks_of_other_features(tmp_path):
    other = str(tmp_path / "banks")
    shutil.copytree(tu.banks(), other)
    mpath = os.path.join(other, "manifest.json")
    with open(mpath) as f:
        m = json.load(f)
    m["features"]["projection_seed"] = 7
    with open(mpath, "w") as f:
        json.dump(m, f)
    p = tu.exdd_cli(
        "export",
        "repository",
        "--onnx",
        tu.onnx_fp32(),
        "--banks",
        other,
        "--out",
        str(tmp_path / "repo"),
        "--features-backend",
        "python",
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "projection_seed: bank has 7, features have 0" in p.stderr
    assert not os.path.exists(tmp_path / "repo")
