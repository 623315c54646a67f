"""What every command shares: one-line usage errors (exit 2), `--version`, plain help with defaults, and a
package that carries its shipped weights when installed from a wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import diffmf_cli
from diffmf_cli.cli.app import _register, app

_register()
REPO_ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("fuse", "evaluate", "benchmark", "train")


def run(*argv: str):
    return CliRunner().invoke(app, list(argv))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["fuse", "--bogus"], "No such option: --bogus"),
        (["fuse", "a", "b", "--batch-size", "x"], "Invalid value for '--batch-size'"),
        (["fuse", "a", "b", "c"], "unexpected extra argument"),
        (["evaluate", "--jobs", "many"], "Invalid value for '--jobs'"),
        (["evaluate"], "Missing argument"),
        (["benchmark", "--iters", "1.5"], "Invalid value for '--iters'"),
        (["benchmark", "--nope"], "No such option: --nope"),
        (["train", "--steps", "ten"], "Invalid value for '--steps'"),
        (["train", "--out"], "requires an argument"),
        (["fusee"], "No such command 'fusee'"),
    ],
)
def test_usage_errors_are_one_line_on_stderr_with_exit_2(argv, words):
    res = run(*argv)
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("diffmf") and ": error: " in lines[0] and words in lines[0]
    assert "--help" in lines[0]  # the way to more information
    assert res.stdout == ""
    assert "╭" not in res.stderr and "Usage:" not in res.stderr


@pytest.mark.parametrize("raised", [KeyboardInterrupt, "abort"])
def test_ctrl_c_in_a_command_exits_130_without_a_traceback(monkeypatch, capsys, raised):
    """Older typers turn Ctrl-C into click's Abort, newer ones into exit 130; either way 130 and at most one
    line. The handler must name an Abort that exists in the installed typer (a vendored click has none at
    top level), or the first Ctrl-C ends in an AttributeError traceback."""
    import typer

    from diffmf_cli.cli import evaluate

    def interrupted(*args, **kwargs):
        raise typer.Abort() if raised == "abort" else raised()

    monkeypatch.setattr(evaluate, "run_command", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        app(["evaluate", "a", "b", "c"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() in ("", "diffmf: interrupted")


def test_an_unexpected_error_surfaces_as_itself(monkeypatch):
    from diffmf_cli.cli import evaluate

    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(evaluate, "run_command", broken)
    with pytest.raises(ValueError, match="a bug"):
        app(["evaluate", "a", "b", "c"])


def test_version():
    res = run("--version")
    assert res.exit_code == 0
    assert res.stdout.strip() == f"diffmf {diffmf_cli.__version__}"


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    assert version("diffmf") == diffmf_cli.__version__


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_plain_and_shows_defaults(command):
    res = run(command, "--help")
    assert res.exit_code == 0, res.output
    text = res.stdout
    assert text.startswith(f"Usage: diffmf {command} [OPTIONS]")
    assert "<bool>" not in text and "╭" not in text
    assert not re.search(r" \.(\s|$)", text)  # a default eaten as markup once left a stray " ."
    assert "-h, --help" in text


def test_fuse_help_names_every_default():
    text = run("fuse", "--help").stdout
    flat = " ".join(text.split())
    for shown in ("[default: png]", "[default: auto]", "[default: 1 on CPU, 8 on CUDA]", "[default: fp32]",
                  "[default: all pairs]", "[default: ir-vis]"):
        assert shown in flat, shown


def test_evaluate_usage_line_is_readable():
    text = run("evaluate", "--help").stdout
    assert text.splitlines()[0] == "Usage: diffmf evaluate [OPTIONS] [FUSED_DIR] IR_DIR VIS_DIR"


def test_bare_command_prints_help_and_exits_0():
    res = run()
    assert res.exit_code == 0
    assert "fuse" in res.stdout and "evaluate" in res.stdout and "--version" in res.stdout


def test_usage_error_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "diffmf_cli", "fuse", "--bogus"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "diffmf fuse: error: No such option: --bogus (see diffmf fuse --help)"
    assert proc.stdout == ""


def test_registering_the_commands_does_not_import_torch():
    """`diffmf --help` and usage errors stay fast, and main() sets OMP_WAIT_POLICY before torch is imported:
    the command modules keep torch (and what imports it) inside the commands."""
    code = "import sys; from diffmf_cli.cli.app import _register; _register(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.slow
def test_wheel_carries_the_shipped_weights(tmp_path):
    """The weights live in the repo's top-level weights/; a wheel must carry them inside the package (the
    full install-and-fuse check from a fresh venv is in .ci/run)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "diffmf_cli", src / "diffmf_cli",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(REPO_ROOT / "weights", src / "weights")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("diffmf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for filename in ("diffmf_ir_vis.safetensors", "diffmf_medical.safetensors"):
        assert f"diffmf_cli/shipped_weights/{filename}" in names
    assert "diffmf_cli/samples/ir/tno_07.png" in names
    assert "diffmf_cli/fusion.py" in names or any(n.startswith("diffmf_cli/") and n.endswith(".py") for n in names)
