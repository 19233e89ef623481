"""The command line starts without importing torch (lazy subparsers, a cached listing), prints the
subcommand's usage on a bad flag, and keeps the names it writes out equal to their sources. Progress bars:
clips counted, stderr only, off without a terminal or with --no-progress. Timings are in
benchmarks/test_bench_cli.py."""

from __future__ import annotations

import argparse
import importlib
import io
import os
import subprocess
import sys
import textwrap

import pytest

from cmdbench import cli

LIGHT = [name for name in cli.COMMANDS if name != "efficiency"]  # efficiency's parser reads its module's constants


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


# --- names written out so the parser needs no torch --------------------------------------------------------
def test_written_out_names_equal_their_sources():
    from cmdbench.commands import evaluate, ref_stats, sample
    from cmdbench.interfaces import DTYPES
    from cmdbench.metrics import fvd, i3d
    from cmdbench.metrics.clipsim_standin import STANDIN_NAME
    from cmdbench.video import PIX_FMT_MULTIPLE

    assert ref_stats.DEFAULT_PRESET == fvd.DEFAULT_PRESET
    assert tuple(sorted(fvd.PRESETS)) == ref_stats.PRESET_NAMES
    assert tuple(sorted(fvd.PROTOCOL_METRICS)) == ref_stats.FVD_METRIC_NAMES
    assert ref_stats.EXTRACTOR_NAMES == i3d.EXTRACTOR_NAMES
    assert sample.DTYPES == DTYPES and tuple(sorted(PIX_FMT_MULTIPLE)) == evaluate.PIX_FMTS
    assert evaluate.CLIP_STANDIN == STANDIN_NAME == ref_stats.CLIP_STANDIN
    import cmdbench.metrics.catalog  # noqa: F401
    from cmdbench.bench.motion_strata import STAND_IN_OPTIONS
    from cmdbench.registry import METRICS

    family = {n for n in METRICS.names() if ref_stats.is_fvd_family(METRICS.get(n))}
    fvd_names = {*fvd.PROTOCOL_METRICS, *(f"fvd-{p}" for p in fvd.PRESETS)}
    assert tuple(sorted(family - fvd_names)) == ref_stats.JUDGE_METRIC_NAMES  # the judges ref-stats --metric takes
    assert tuple(sorted({o["extractor"] for o in STAND_IN_OPTIONS.values()})) == ref_stats.STAND_IN_EXTRACTORS


def test_top_level_help_text_is_each_commands_own():
    for name, (module, help_text) in cli.COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(f"cmdbench.commands.{module}").add_parser(parser.add_subparsers())
        action = parser._subparsers._group_actions[0]
        assert action._choices_actions[0].help == help_text, name
        assert name in action.choices


# --- no torch at start-up ------------------------------------------------------------------------------------
def test_building_any_light_commands_parser_imports_no_torch():
    out = run_python(f"""
        import sys
        from cmdbench.cli import build_parser
        for name in {LIGHT!r}:
            parser = build_parser([name])
            assert name in parser.command_parsers
        heavy = sorted(m for m in ("torch", "diffusers", "transformers", "cmdbench.cmd.training", "pandas")
                       if m in sys.modules)
        print(heavy)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_version_help_and_cached_list_import_no_torch(tmp_path):
    env = {"CMDBENCH_CACHE": str(tmp_path)}
    code = """
        import contextlib, io, sys
        from cmdbench.cli import main
        argv = sys.argv[1:] if len(sys.argv) > 1 else {argv!r}
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main({argv!r})
            except SystemExit:
                pass
        print("torch" in sys.modules)
    """
    for argv in (["--version"], ["--help"], ["evaluate", "--help"]):
        out = run_python(code.format(argv=argv), env)
        assert out.stdout.strip() == "False", (argv, out.stderr)
    # `list` twice: the first run builds the cache (imports every generator), the next reads it. (Files edited
    # by someone else in between change the key and rebuild it: then the pair is tried again.)
    listing = """
        import contextlib, io, sys
        from cmdbench.cli import main
        from cmdbench.commands.list_cmd import listing_key
        key = listing_key()
        with contextlib.redirect_stdout(io.StringIO()):
            main(["list"])
        print("torch" in sys.modules, key == listing_key())
    """
    for _ in range(3):
        first = run_python(listing, env)
        assert first.returncode == 0, first.stderr
        second = run_python(listing, env)
        imported, stable = second.stdout.split()
        if stable == "True" and first.stdout.split()[1] == "True":
            break
    assert imported == "False", second.stderr


def test_a_bad_flag_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--videos", "x", "--metric", "psnr", "--records", "r", "--bogus"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("usage: cmdbench evaluate") and "error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        cli.main(["table", "--digits", "x", "runs"])
    assert capsys.readouterr().err.startswith("usage: cmdbench table")


def test_unknown_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["evalute"])
    err = capsys.readouterr().err
    assert "invalid choice: 'evalute'" in err and "'evaluate'" in err


# --- the cached listing --------------------------------------------------------------------------------------
def test_listing_key_follows_installed_plugins_and_their_files(tmp_path, monkeypatch):
    from cmdbench.commands import list_cmd
    from cmdbench.registry import ENTRY_POINT_GROUP

    site = tmp_path / "site"
    (site / "my_plugin").mkdir(parents=True)
    monkeypatch.syspath_prepend(str(site))
    key0 = list_cmd.listing_key()
    info = site / "my_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmine = my_plugin\n")
    (site / "my_plugin" / "__init__.py").write_text("X = 1\n")
    key1 = list_cmd.listing_key()
    (site / "my_plugin" / "__init__.py").write_text("X = 22\n")  # an edit (size and mtime change)
    key2 = list_cmd.listing_key()
    monkeypatch.setenv("CMDBENCH_STRICT_PLUGINS", "1")
    key3 = list_cmd.listing_key()
    assert len({key0, key1, key2, key3}) == 4
    assert list_cmd.listing_key() == key3  # stable when nothing changes


def test_cached_listing_is_replayed_with_its_plugin_lines(tmp_path, monkeypatch, capsys):
    from cmdbench.commands import list_cmd

    monkeypatch.setenv("CMDBENCH_CACHE", str(tmp_path))
    calls = []

    def live():
        calls.append(1)
        sys.stderr.write("cmdbench: skipped plugin 'bad = bad_mod': ImportError: no GPU\n")
        return {"format": list_cmd.LISTING_FORMAT, "stderr": "cmdbench: skipped plugin 'bad = bad_mod': "
                "ImportError: no GPU\n", "kinds": {k: {"count": 1, "entries": [[f"{k}-x", "one"]]}
                                                   for k in list_cmd.KINDS}}

    monkeypatch.setattr(list_cmd, "live_listing", live)
    monkeypatch.setattr(list_cmd, "nothing_registered_yet", lambda: True)
    first, cached = list_cmd.cached_listing()
    assert not cached and calls == [1]
    second, cached = list_cmd.cached_listing()
    assert cached and calls == [1] and second["kinds"] == first["kinds"]
    assert capsys.readouterr().err.count("skipped plugin 'bad = bad_mod'") == 2  # replayed from the cache
    assert not list_cmd.cached_listing(refresh=True)[1] and calls == [1, 1]
    monkeypatch.setattr(list_cmd, "nothing_registered_yet", lambda: False)  # a caller registered names itself
    assert not list_cmd.cached_listing()[1] and len(calls) == 3


# --- progress bars -------------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_never_with_no_progress():
    from cmdbench.commands.progress import progress_enabled

    assert progress_enabled(argparse.Namespace(no_progress=False), Terminal())
    assert not progress_enabled(argparse.Namespace(no_progress=True), Terminal())
    assert not progress_enabled(argparse.Namespace(no_progress=False), io.StringIO())  # a pipe or a log file


def test_bar_counts_clips_with_rate_and_eta(monkeypatch):
    import torch

    from cmdbench.commands import progress
    from cmdbench.metrics.fvd import build_extractor, get_protocol

    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress.progress_bar(total=4, desc="real clips", enabled=True)
    bar.delay = 0  # draw at once (the default waits half a second)
    _, tiny = build_extractor(get_protocol("videogpt"), "i3d-random-tiny")
    counting = progress.CountingExtractor(tiny, bar)
    assert (counting.name, counting.checksum, counting.dim) == (tiny.name, tiny.checksum, tiny.dim)
    counting.extract(torch.zeros(3, 16, 3, 32, 32, dtype=torch.uint8))
    bar.refresh()
    bar.close()
    assert bar.n == 3
    text = stream.getvalue()
    assert "real clips" in text and "3/4" in text and "clip/s" in text and "<" in text  # ETA: elapsed<remaining
