"""Reliability, round three: what a diverged, resumed, damaged or crafted run directory does.

One test per defect of the issue (numbers in the test names' docstrings): a kept checkpoint is finite in every
tensor, ``nan_policy: skip`` is bounded, folder walks never loop, ``--resume`` checks what it resumes and rebuilds
lost weights, sizes read from metadata are bounded, a damaged cache entry is regenerated, and bad input is one line.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine_fakes import MODEL, NUM_CLASSES, base_config, fake_protocol, install
from msresnet.commands.train import train_config
from msresnet.engine import checkpoint as ckpt
from msresnet.engine.checkpoint import load_model, read_checkpoint_info
from msresnet.engine.config import load_train_config
from msresnet.engine.signals import TrainingInterrupted
from msresnet.engine.train import NonFiniteError, train
from msresnet.errors import UserError

TINY = {"protocol_params": {"n_train": 160}, "batch_size": 32}  # 144 training images: 5 steps per epoch


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run on the fake protocol; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("fin") / "run"
    with pytest.MonkeyPatch.context() as mp:
        install(mp)
        torch.set_num_threads(1)
        train(load_train_config(None, base_config(out, **TINY)))
    return out


def _copy(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def _cli_config(out: Path, **given):
    """What ``msresnet train --out OUT --resume [options]`` builds (the CLI passes only the options given)."""
    return train_config(None, {"out": str(out), "resume": True, **given})


def _edit_metadata(run: Path, edit) -> None:
    for p in (run / "checkpoints").glob("*.safetensors"):
        with safe_open(str(p), "pt") as f:
            meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        d = json.loads(meta[ckpt.META_KEY])
        edit(d)
        meta[ckpt.META_KEY] = json.dumps(d)
        save_file(tensors, str(p), metadata=meta)


# ------------------------------------------------------------------------------------ 1. finite checkpoints only


def test_checkpoint_writer_refuses_a_nonfinite_buffer(finished, tmp_path, monkeypatch):
    """1: the writer's finiteness rule covers buffers (an overflowed BatchNorm variance), and says what is kept."""
    install(monkeypatch)
    run = _copy(finished, tmp_path)
    before = (run / "checkpoints" / "last.state.pt").read_bytes()
    model = load_model(run)
    bn = next(n for n, _ in model.named_buffers() if n.endswith("running_var"))
    model.get_buffer(bn).fill_(float("inf"))
    weights = (run / "checkpoints" / "last.safetensors").read_bytes()
    with pytest.raises(NonFiniteError, match=rf"non-finite values in 1 tensor\(s\), e\.g\. {bn}"):
        ckpt.save_weights(run / "checkpoints" / "last.safetensors", model, model.checkpoint_info)
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == weights
    assert (run / "checkpoints" / "last.state.pt").read_bytes() == before


def test_nan_stop_keeps_only_finite_checkpoints(tmp_path, monkeypatch):
    """1: running statistics that overflow while the loss is still finite stop the run before they are saved."""
    install(monkeypatch)
    from msresnet.engine import state as state_mod

    real = state_mod.save_checkpoint

    def overflow_at_step_3(ckdir, kind, state, *a, **k):
        if state.global_step == 3:
            for name, buf in state.model.named_buffers():
                if name.endswith("running_var"):
                    buf.fill_(float("inf"))
        return real(ckdir, kind, state, *a, **k)

    monkeypatch.setattr("msresnet.engine.state.save_checkpoint", overflow_at_step_3)
    monkeypatch.setattr("msresnet.engine.train.save_checkpoint", overflow_at_step_3)
    out = tmp_path / "n"
    with pytest.raises(NonFiniteError, match=r"non-finite by step 3 .*running_var.*last good checkpoint"):
        train(load_train_config(None, base_config(out, **TINY, checkpoint_every=1)))
    kept = load_file(str(out / "checkpoints" / "last.safetensors"))
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())
    assert ckpt.load_state(out / "checkpoints" / "last.state.pt")["global_step"] == 2


def test_loading_refuses_nonfinite_weights(finished, tmp_path):
    """1: evaluate/predict/export load through load_model, which refuses a diverged checkpoint in one line."""
    run = _copy(finished, tmp_path)
    for p in (run / "checkpoints").glob("*.safetensors"):
        with safe_open(str(p), "pt") as f:
            meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        key = next(k for k in t if k.endswith("running_var"))
        t[key] = torch.full_like(t[key], float("inf"))
        save_file(t, str(p), metadata=meta)
    with pytest.raises(NonFiniteError, match="non-finite values .*running_var"):
        load_model(run)
    from msresnet.cli import main

    assert main(["predict", str(run), str(tmp_path / "none.png")]) == 2


def test_evaluate_refuses_nonfinite_outputs():
    """1: an accuracy is never computed from NaN scores (their argmax is class 0)."""
    from msresnet.engine.evaluate import evaluate_sweep

    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], NUM_CLASSES), float("nan"))

    with pytest.raises(NonFiniteError, match="non-finite outputs"):
        evaluate_sweep(Broken(), fake_protocol(), test_limit=8, batch_size=8)


# ------------------------------------------------------------------------------------ 2. bounded skip


def test_skip_policy_stops_a_diverged_run(tmp_path, monkeypatch):
    """2: every step non-finite: skip stops after one epoch's worth of steps, writes nothing, exits as an error."""
    install(monkeypatch)
    real_ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr("msresnet.engine.step.F.cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
    out = tmp_path / "s"
    with pytest.raises(NonFiniteError, match="5 consecutive non-finite steps .* no checkpoint was written yet"):
        train(load_train_config(None, base_config(out, **TINY, epochs=3, nan_policy="skip")))
    assert not out.exists()  # nothing was kept, so the new run directory is gone again


def test_a_skipped_step_leaves_the_buffers_as_they_were(monkeypatch):
    """2: the bad batch's BatchNorm statistics are undone with the update, so a skipped step leaves no trace."""
    import msresnet
    from msresnet.engine.distributed import DistContext
    from msresnet.engine.step import TrainStep, train_step

    cfg = load_train_config(None, base_config("unused", nan_policy="skip"))
    model = msresnet.create_model(MODEL, num_classes=NUM_CLASSES, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 16, 16) * 1e3, torch.arange(8) % NUM_CLASSES
    real_ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr("msresnet.engine.step.F.cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
    net = TrainStep(model, None, 0.0).train()
    result = train_step(net, x, y, opt, torch.amp.GradScaler("cpu", enabled=False), list(model.parameters()), cfg,
                        DistContext.from_env("cpu", 60.0))  # fmt: skip
    assert result.skipped is not None
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed the model"


# ------------------------------------------------------------------------------------ 3. one folder walker


def _folder(root: Path, per_class: int = 5) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        d = root / "train" / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def test_walker_never_loops_nor_leaves_the_tree(tmp_path):
    """3: ``ln -s ..`` and a link out of the tree are not followed (one warning); every image is listed once."""
    from msresnet.data.folder import scan_image_folder
    from msresnet.data.walk import SymlinkWarning, walk_files
    from msresnet.predict import expand_inputs

    root = _folder(tmp_path / "f")
    outside = _folder(tmp_path / "elsewhere")
    (root / "train" / "a" / "loop").symlink_to("..")
    (root / "train" / "b" / "out").symlink_to(outside / "train" / "a")
    (root / "train" / "b" / "same").symlink_to(root / "train" / "a")
    with pytest.warns(SymlinkWarning, match="did not follow 3 directory symlink"):
        samples, classes = scan_image_folder(root / "train")
    assert classes == ["a", "b"] and len(samples) == 10
    assert [t for _, t in samples] == [0] * 5 + [1] * 5
    with pytest.warns(SymlinkWarning):
        assert len(walk_files(root)) == 10
    with pytest.warns(SymlinkWarning):
        files, failures, _ = expand_inputs([root / "train"])
    assert len(files) == 10 and not failures


def test_walker_follows_a_link_to_a_directory_the_tree_does_not_list_otherwise(tmp_path):
    """3: a link inside the tree to a hidden directory is followed (it is the only way to reach those files)."""
    from msresnet.data.walk import walk_files

    root = _folder(tmp_path / "f")
    hidden = root / ".store"
    shutil.copytree(root / "train" / "a", hidden)
    (root / "train" / "c").symlink_to(hidden)
    assert len(walk_files(root, skip_hidden=True)) == 15


def test_training_folder_skips_a_dangling_file_symlink(tmp_path, tmp_cache):
    """3: a dangling file symlink is an unreadable file: skipped and reported, as docs/own-data.md says."""
    from msresnet.data import build_protocol
    from msresnet.data.folder import BadImageWarning

    root = _folder(tmp_path / "f")
    (root / "train" / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(BadImageWarning, match=r"skipped 1 of 9 images .*gone\.png \(no such file\)"):
        protocol = build_protocol("folder", root=str(root))
        assert len(protocol.train) == 8  # parts are built on first use


# ------------------------------------------------------------------------------------ 4. resume checks


def test_resume_without_config_yaml_refuses_another_batch_size(finished, tmp_path, monkeypatch):
    """4: the training state records its config, so a conflicting option is refused even without config.yaml."""
    install(monkeypatch)
    run = _copy(finished, tmp_path)
    (run / "config.yaml").unlink()
    with pytest.raises(UserError, match=r"trained with batch_size=32, not 16"):
        train(_cli_config(run, batch_size=16, epochs=3))
    with pytest.raises(UserError, match=r"trained with model='resnet8', not 'msresnet8'"):
        train(_cli_config(run, model="msresnet8"))


def test_resume_refuses_another_lr_and_keeps_config_yaml(finished, tmp_path, monkeypatch):
    """4: an option that changes what the run computes is refused and config.yaml is left as it was."""
    install(monkeypatch)
    run = _copy(finished, tmp_path)
    before = (run / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"trained with lr=0.003, not 0.5 .*only epochs"):
        train(_cli_config(run, lr=0.5, epochs=3))
    assert (run / "config.yaml").read_text() == before


def test_more_epochs_is_a_resume_event_not_a_rewrite(finished, tmp_path, monkeypatch):
    """4: more epochs is allowed; config.yaml keeps the launch's fields and records the change as a resume event."""
    install(monkeypatch)
    run = _copy(finished, tmp_path)
    train(_cli_config(run, epochs=3))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 2
    event = saved["provenance"]["resumes"][-1]
    assert event["changed"] == {"epochs": {"from": 2, "to": 3}} and event["step"] == 10
    assert ckpt.load_state(run / "checkpoints" / "last.state.pt")["epoch"] == 3
    train(_cli_config(run))  # a plain --resume continues with the state's config: finished, nothing to do
    assert ckpt.load_state(run / "checkpoints" / "last.state.pt")["epoch"] == 3


def test_resume_with_a_corrupt_config_yaml(finished, tmp_path, monkeypatch, capsys):
    """4: config.yaml is not needed to resume; a damaged one is rebuilt from the state (non-UTF-8 included)."""
    install(monkeypatch)
    run = _copy(finished, tmp_path)
    (run / "config.yaml").write_bytes(b"model: [unclosed\n\xff\xfe")
    train(_cli_config(run, epochs=3))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == MODEL and "rebuilt" in saved["provenance"]


# ------------------------------------------------------------------------------------ 5. lost weights are rebuilt


@pytest.mark.parametrize("damage", ["delete", "truncate", "stale"])
def test_resume_of_a_finished_run_rebuilds_its_weights(finished, tmp_path, monkeypatch, capsys, damage):
    """5: weights missing, truncated or older than the state (a kill between the two writes) are rebuilt."""
    install(monkeypatch)
    run = _copy(finished, tmp_path)
    last = run / "checkpoints" / "last.safetensors"
    reference = {k: v.clone() for k, v in load_file(str(last)).items()}  # not backed by the file's mmap
    if damage == "delete":
        last.unlink()
        (run / "checkpoints" / "best.safetensors").unlink()
    elif damage == "truncate":
        last.write_bytes(last.read_bytes()[:1000])
    else:
        _edit_metadata(run, lambda d: d.update(step=4))
    train(_cli_config(run))
    assert "rebuilt" in capsys.readouterr().err
    rebuilt = load_file(str(last))
    assert all(torch.equal(reference[k], rebuilt[k]) for k in reference)
    assert read_checkpoint_info(last).step == 10
    load_model(run)


def test_resume_of_a_finished_run_says_so(finished, tmp_path, monkeypatch, capsys):
    """9: a finished run is not "resumed at epoch 3" of 2."""
    install(monkeypatch)
    run = _copy(finished, tmp_path)
    train(_cli_config(run))
    err = capsys.readouterr().err
    assert "has finished its 2 epoch(s)" in err and "epoch 3" not in err


# ------------------------------------------------------------------------------------ 6. bounded metadata


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["preprocess"].update(canvas=[100000, 100000]), "canvas 100000 is not a side"),
        (lambda d: d.update(input_size=[100000, 100000]), "input_size"),
        (lambda d: d["model_kwargs"].update(num_classes=5), "model_kwargs sets num_classes"),
        (lambda d: d.update(num_classes=10**9), "num_classes 1000000000"),
        (lambda d: d["preprocess"].update(std=[0.0]), "std > 0"),
        (lambda d: d["model_kwargs"].update(width=64.0), "describes a model of .* values, the file holds"),
    ],
)
def test_crafted_metadata_is_refused(finished, tmp_path, edit, message):
    """6: every size read from a checkpoint's metadata is bounded before anything is allocated."""
    run = _copy(finished, tmp_path)
    _edit_metadata(run, edit)
    with pytest.raises(UserError, match=f"corrupt msresnet metadata: .*{message}"):
        load_model(run)


def test_protocol_sizes_are_bounded():
    """6: sizes in protocol parameters (stored with every checkpoint) are bounded too."""
    from msresnet.data import build_protocol

    with pytest.raises(UserError, match="canvas.*<= 8192"):
        build_protocol("fmnist-ls", canvas=100000)


def test_native_size_input_is_bounded(tmp_path):
    """8: ``predict --native-size --max-side 0`` on a huge image is a per-image failure, not a 3 GB allocation."""
    from msresnet.data.images import BadImageError
    from msresnet.predict import MAX_INPUT_PIXELS, prepare_unit
    from msresnet.preprocess import Preprocess

    side = int(MAX_INPUT_PIXELS**0.5) + 1
    Image.new("L", (side, side), 128).save(tmp_path / "big.png")
    with pytest.raises(BadImageError, match="over the .* pixels one model input may have"):
        prepare_unit(tmp_path / "big.png", Preprocess(), max_side=None)
    x, _ = prepare_unit(tmp_path / "big.png", Preprocess(), max_side=1024)
    assert max(x.shape[-2:]) == 1024


# ------------------------------------------------------------------------------------ 7. the cache heals itself


def test_a_truncated_cache_entry_is_regenerated(tmp_path):
    """7: a cache file that fails to load (truncated zip) is regenerated, for data and for the checksum."""
    from msresnet.data._store import PartStore
    from msresnet.data.datasets import ImageTensorDataset

    def make():
        return ImageTensorDataset(torch.arange(64, dtype=torch.uint8).view(4, 1, 4, 4), torch.arange(4))

    store = PartStore(tmp_path, {"train": make})
    reference = store.checksum("train")
    path = tmp_path / "train.npz"
    os.truncate(path, 100)
    assert PartStore(tmp_path, {"train": make}).checksum("train") == reference
    os.truncate(path, 100)
    assert torch.equal(PartStore(tmp_path, {"train": make}).get("train").images, make().images)


# ------------------------------------------------------------------------------------ 8. one line, exit 2


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"seed": 1180591620717411303424}, "'seed' must be in"),
        ({"model_kwargs": {"num_classes": 5}}, "may not set num_classes"),
        ({"model_kwargs": {"in_chans": 3}}, "may not set in_chans"),
        ({"lr": float("inf")}, "'lr': expected a finite number"),
        ({"weight_decay": "inf"}, "'weight_decay': expected a finite number"),
    ],
)
def test_bad_options_are_user_errors(tmp_path, over, message):
    with pytest.raises(UserError, match=message):
        load_train_config(None, base_config(tmp_path / "r", **over))


def test_a_non_utf8_recipe_is_a_user_error(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"epochs: 1\nlr: \xff\xfe\n")
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_train_config(tmp_path / "bad.yaml", {"model": MODEL, "out": str(tmp_path / "r")})


def test_ctrl_c_while_the_command_line_imports_torch():
    """8: Ctrl-C during start-up imports ends the command with its one line and 130 (deterministic: the
    interrupt is raised by the import of msresnet.models itself)."""
    code = (
        "import builtins, sys\n"
        "sys.argv = ['msresnet']\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'msresnet.models':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "import msresnet\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 130 and proc.stderr.strip() == "msresnet: interrupted"


def test_sigterm_during_the_final_validation_stops_the_run(tmp_path, monkeypatch):
    """8: a stop signal that arrives while the last epoch validates is honoured (exit 143), not ignored."""
    install(monkeypatch)
    from msresnet.engine import train as train_mod

    real = train_mod.validate
    calls = {"n": 0}

    def validate(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "validate", validate)
    with pytest.raises(TrainingInterrupted) as stop:
        train(load_train_config(None, base_config(tmp_path / "r", **TINY)))
    assert stop.value.code == 143
    assert ckpt.load_state(tmp_path / "r" / "checkpoints" / "last.state.pt")["epoch"] == 2


def test_messages_do_not_claim_a_checkpoint_that_does_not_exist(tmp_path, monkeypatch):
    """8: "the previous checkpoint is intact" only when there is one."""

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)  # the one atomic writer (msresnet._atomic) renames with it
    with pytest.raises(ckpt.CheckpointWriteError, match="No space left on device; nothing was written"):
        ckpt.atomic_write_bytes(tmp_path / "x.safetensors", b"x")
    (tmp_path / "y.safetensors").write_bytes(b"old")
    with pytest.raises(ckpt.CheckpointWriteError, match="the previous checkpoint is intact"):
        ckpt.atomic_write_bytes(tmp_path / "y.safetensors", b"x")


# ------------------------------------------------------------------------------------ 9. cosmetics


def test_pickle_refusal_names_the_reason_in_whole_words(finished, tmp_path):
    run = _copy(finished, tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    with open(run / "checkpoints" / "last.state.pt", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(UserError) as refused:
        ckpt.load_state(run / "checkpoints" / "last.state.pt")
    text = str(refused.value)
    assert "nothing in it was run" in text and "In PyTorch 2.6" not in text and "Unsupported" in text


def test_a_failed_new_run_leaves_no_directory(tmp_path, monkeypatch):
    """9: a new run that fails before its first checkpoint removes the directory it created."""
    import msresnet.data

    def no_data(*a, **k):
        raise UserError("no images")

    monkeypatch.setattr(msresnet.data, "build_protocol", no_data)
    with pytest.raises(UserError, match="no images"):
        train(load_train_config(None, base_config(tmp_path / "r", **TINY)))
    assert not (tmp_path / "r").exists()


def test_the_writer_lock_holder_clears_dead_writers_temp_files(finished, tmp_path):
    """9: a killed calibrate's ``.best.safetensors.tmp-PID`` is removed by the next writer of the run."""
    from msresnet.engine.lock import hold_checkpoint

    run = _copy(finished, tmp_path)
    stale = run / "checkpoints" / ".best.safetensors.tmp-999999"
    stale.write_bytes(b"partial")
    with hold_checkpoint(run / "checkpoints" / "best.safetensors", "calibrate"):
        assert not stale.exists()


def test_run_directory_is_printed_by_rank_0_only(tmp_path, monkeypatch, capsys):
    from msresnet import cli

    monkeypatch.setattr("msresnet.engine.train.train", lambda cfg: Path(cfg.out))
    monkeypatch.setattr("msresnet.commands.train.precheck", lambda cfg: None)
    args = ["train", "--model", MODEL, "--out", str(tmp_path / "r")]
    monkeypatch.setenv("RANK", "1")
    assert cli.main(args) == 0
    assert "run directory" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    assert cli.main(args) == 0
    assert "run directory" in capsys.readouterr().out


def test_no_warning_noise_from_the_walker_on_a_plain_folder(tmp_path):
    from msresnet.data.folder import scan_image_folder

    root = _folder(tmp_path / "f")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(scan_image_folder(root / "train")[0]) == 10


def test_ddp_wrapping_warns_nothing():
    """9: the DDP wrapper names no deprecated argument (its FutureWarning was printed once per rank)."""
    import torch.distributed as dist

    from msresnet.engine.distributed import DistContext

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            DistContext(world_size=2).wrap(torch.nn.Linear(2, 2))
    finally:
        dist.destroy_process_group()
