"""The image builder without building: hashes, manifests, catalog, wheel cache, guards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.config import Settings
from core.errors import ImageBuildError, InsufficientResources, InvalidInput, NotFound
from images import builder, catalog, plumbing, recipe, wheels
from images.catalog import ImageManifest
from images.recipe import Flavour
from tests.conftest import write_image

LLAMA_SHA = "11" * 32


@pytest.fixture
def agent_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "guest_agent"
    shutil.copytree(recipe.agent_source_dir(), dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture
def files_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "files"
    shutil.copytree(recipe.FILES_DIR, dest)
    return dest


def fake_llama_wheel(settings: Settings) -> Path:
    folder = wheels.llama_wheel_dir(settings)
    folder.mkdir(parents=True)
    wheel = folder / f"llama_cpp_python-{wheels.LLAMA_CPP_VERSION}-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"not really a wheel")
    return wheel


# --- hashes -----------------------------------------------------------------------------


def test_hashes_are_stable_hex(agent_copy: Path) -> None:
    first = recipe.recipe_hash(LLAMA_SHA, agent_dir=agent_copy)
    assert first == recipe.recipe_hash(LLAMA_SHA, agent_dir=agent_copy)
    assert len(first) == 64 and int(first, 16) >= 0
    assert recipe.base_hash(LLAMA_SHA) == recipe.base_hash(LLAMA_SHA)
    assert first != recipe.base_hash(LLAMA_SHA)


def test_agent_edit_changes_recipe_hash_only(agent_copy: Path) -> None:
    base, full = recipe.base_hash(LLAMA_SHA), recipe.recipe_hash(LLAMA_SHA, agent_dir=agent_copy)
    with (agent_copy / "app.py").open("a") as handle:
        handle.write("\n# edited\n")
    assert recipe.base_hash(LLAMA_SHA) == base
    assert recipe.recipe_hash(LLAMA_SHA, agent_dir=agent_copy) != full


def test_agent_caches_and_non_python_files_do_not_count(agent_copy: Path) -> None:
    full = recipe.recipe_hash(LLAMA_SHA, agent_dir=agent_copy)
    (agent_copy / "__pycache__").mkdir()
    (agent_copy / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (agent_copy / "notes.txt").write_text("scratch")
    assert recipe.recipe_hash(LLAMA_SHA, agent_dir=agent_copy) == full
    assert all(p.suffix == ".py" for p in recipe.agent_files(agent_copy))


def test_files_and_llama_wheel_change_base_hash(files_copy: Path, agent_copy: Path) -> None:
    base = recipe.base_hash(LLAMA_SHA, files_copy)
    unit = files_copy / "rootfs/etc/systemd/system/somnus-agent.service"
    unit.write_text(unit.read_text() + "\n# edited\n")
    assert recipe.base_hash(LLAMA_SHA, files_copy) != base
    assert recipe.base_hash("22" * 32) != recipe.base_hash(LLAMA_SHA)
    assert recipe.recipe_hash("22" * 32, agent_dir=agent_copy) != recipe.recipe_hash(
        LLAMA_SHA, agent_dir=agent_copy
    )


def test_requirements_are_exact_pins() -> None:
    for line in (*recipe.GUEST_REQUIREMENTS, *recipe.GUEST_CONSTRAINTS, recipe.MODEL_REQUIREMENT):
        name, _, version = line.partition("==")
        assert name and version and not set(version) & set("<>=*,"), line
    assert f"llama-cpp-python=={wheels.LLAMA_CPP_VERSION}" in recipe.GUEST_REQUIREMENTS


# --- files that go into the image -----------------------------------------------------------


def test_agent_unit_and_cloud_config() -> None:
    rootfs = recipe.FILES_DIR / "rootfs"
    unit = (rootfs / "etc/systemd/system/somnus-agent.service").read_text().splitlines()
    for line in (
        # Beside cloud-init (the agent waits for its config), stopped before unmounting.
        "DefaultDependencies=no",
        "After=local-fs.target systemd-journald.socket",
        "Conflicts=shutdown.target",
        "Before=shutdown.target",
        "User=somnus-agent",
        "Environment=PYTHONPATH=/opt/somnus/agent",
        "ExecStart=/opt/somnus/venv/bin/python -m guest_agent",
        "Restart=always",
        "WantedBy=multi-user.target",
    ):
        assert line in unit
    cfg = yaml.safe_load((rootfs / "etc/cloud/cloud.cfg.d/90_somnus.cfg").read_text())
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    assert cfg["system_info"]["network"]["renderers"] == ["networkd"]
    # Its stages are masked in the hook; lists for them would only mislead.
    assert "cloud_config_modules" not in cfg and "cloud_final_modules" not in cfg
    hook = recipe.CUSTOMIZE_HOOK.read_text()
    assert "cloud-config.service cloud-final.service" in hook


def test_customize_hook_is_valid_sh() -> None:
    subprocess.run(["sh", "-n", str(recipe.CUSTOMIZE_HOOK)], check=True)


# --- manifest and catalog --------------------------------------------------------------------


def test_manifest_round_trip_and_relocation(settings: Settings, tmp_path: Path) -> None:
    made = write_image(settings, "ab" * 32)
    assert ImageManifest.load(made.path) == made
    moved = tmp_path / "elsewhere"
    shutil.move(made.path, moved)
    loaded = ImageManifest.load(moved)
    assert loaded.path == moved.resolve()
    assert loaded.disk == moved.resolve() / "disk.qcow2" and loaded.disk.is_file()


def test_catalog_lists_newest_first_and_skips_junk(settings: Settings) -> None:
    old = write_image(settings, "aa" * 32, age_s=100)
    new = write_image(settings, "bb" * 32)
    junk = settings.images_dir / "0123456789abcdef"
    junk.mkdir()
    (junk / catalog.MANIFEST_NAME).write_text("{not json")
    (write_image(settings, "cc" * 32).disk).unlink()  # incomplete: disk missing
    (settings.images_dir / ".disk-staging").mkdir()
    (settings.images_dir / "base-x.tar").write_bytes(b"")
    assert [m.recipe_hash for m in catalog.list_images(settings)] == [
        new.recipe_hash,
        old.recipe_hash,
    ]


def test_get_image_by_prefix_and_errors(settings: Settings) -> None:
    with pytest.raises(NotFound, match="somnus image build"):
        catalog.get_image(settings)
    first = write_image(settings, "abc1" + "0" * 60)
    write_image(settings, "abc2" + "0" * 60)
    assert catalog.get_image(settings, "ABC1") == first
    with pytest.raises(InvalidInput, match="ambiguous"):
        catalog.get_image(settings, "abc")
    with pytest.raises(NotFound) as err:
        catalog.get_image(settings, "ffff")
    assert "\n" not in str(err.value)


def test_get_image_prefers_current_recipe_over_newest(settings: Settings) -> None:
    fake_llama_wheel(settings)
    current = catalog.current_recipe_hash(settings)
    assert current is not None
    wanted = write_image(settings, current, age_s=500)
    write_image(settings, "ee" * 32)
    assert catalog.get_image(settings) == wanted


def test_get_image_without_wheel_falls_back_to_newest(settings: Settings) -> None:
    write_image(settings, "aa" * 32, age_s=100)
    newest = write_image(settings, "bb" * 32)
    assert catalog.current_recipe_hash(settings) is None
    assert catalog.get_image(settings) == newest


def test_each_flavour_has_its_own_hashes_and_images(settings: Settings) -> None:
    hashes = {recipe.recipe_hash(LLAMA_SHA, flavour=f) for f in Flavour}
    assert len(hashes) == len(Flavour)
    assert len({recipe.base_hash(LLAMA_SHA, flavour=f) for f in Flavour}) == len(Flavour)
    for flavour in (Flavour.ARTIFACTS, Flavour.RESEARCH):
        assert set(recipe.flavour_packages(flavour)) > set(recipe.PACKAGES)
    assert builder.base_tarball(settings, "x").name == "base-x.tar"  # as before flavours
    with pytest.raises(NotFound, match="'somnus image build --flavour artifacts'"):
        catalog.get_image(settings, flavour=Flavour.ARTIFACTS)
    plain = write_image(settings, "aa" * 32)
    made = write_image(settings, "bb" * 32, Flavour.ARTIFACTS, age_s=100)
    assert catalog.get_image(settings, flavour=Flavour.ARTIFACTS) == made
    assert catalog.get_image(settings) == plain
    # A manifest written before flavours existed reads as a base image.
    legacy = plain.model_dump(mode="json", exclude={"flavour"})
    assert ImageManifest.model_validate(legacy).flavour is Flavour.BASE


def test_delete_image(settings: Settings) -> None:
    made = write_image(settings, "ab" * 32)
    catalog.delete_image(settings, "abab")
    assert not made.path.exists()
    assert not list(settings.images_dir.iterdir())
    with pytest.raises(NotFound):
        catalog.delete_image(settings, "abab")


# --- wheels ----------------------------------------------------------------------------------


def test_llama_wheel_adopted_from_setup_build(settings: Settings) -> None:
    legacy = settings.cache / "wheels-build"
    legacy.mkdir(parents=True)
    source = legacy / f"llama_cpp_python-{wheels.LLAMA_CPP_VERSION}-py3-none-linux_x86_64.whl"
    source.write_bytes(b"portable build")
    assert wheels.find_llama_wheel(settings) is None
    wheel = wheels.ensure_llama_wheel(settings)
    assert wheel.parent == wheels.llama_wheel_dir(settings)
    assert wheel.read_bytes() == b"portable build"
    assert (wheel.parent / "build-info.json").is_file()
    assert oct(wheel.stat().st_mode & 0o777) == oct(0o644)
    assert wheels.ensure_llama_wheel(settings) == wheel
    assert not [p for p in settings.wheels_dir.iterdir() if p.name.startswith(".tmp")]


def test_llama_key_depends_on_cmake_flags(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = wheels.llama_wheel_dir(settings)
    monkeypatch.setattr(
        wheels, "PORTABLE_CMAKE_ARGS", wheels.PORTABLE_CMAKE_ARGS + " -DGGML_AMX=ON"
    )
    assert wheels.llama_wheel_dir(settings) != before


def test_wheels_cli_usage() -> None:
    assert wheels.main([]) == 2
    assert wheels.main(["nonsense"]) == 2


# --- plumbing and guards ------------------------------------------------------------------


def test_failed_command_names_stage_and_log(settings: Settings) -> None:
    log = plumbing.BuildLog.new(settings, "test")
    with pytest.raises(ImageBuildError) as err:
        log.run("base", ["sh", "-c", "echo boom-output; exit 3"])
    message = str(err.value)
    assert "stage 'base'" in message and str(log.path) in message and "\n" not in message
    assert "boom-output" in log.path.read_text()
    with pytest.raises(ImageBuildError, match="cannot run"):
        log.run("disk", ["/nonexistent/tool"])
    assert log.capture("disk", ["echo", "hi"]) == "hi\n"


def test_free_space_check(tmp_path: Path) -> None:
    plumbing.check_free_space(tmp_path / "not" / "yet", 1)
    with pytest.raises(InsufficientResources, match=r"GiB free in .*only"):
        plumbing.check_free_space(tmp_path, 1 << 60)


def test_publish_dir_loser_discards(tmp_path: Path) -> None:
    final, first, second = tmp_path / "final", tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "f").write_text(folder.name)
    assert plumbing.publish_dir(first, final)
    assert not plumbing.publish_dir(second, final)
    assert (final / "f").read_text() == "a" and not second.exists()


def test_world_readable(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o700)
    (tmp_path / "d" / "initrd").write_bytes(b"")
    os.chmod(tmp_path / "d" / "initrd", 0o600)
    plumbing.make_world_readable(tmp_path / "d")
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "initrd").stat().st_mode & 0o777 == 0o644


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="build_image requires root")


def test_build_returns_cached_image_without_work(settings: Settings) -> None:
    llama = fake_llama_wheel(settings)
    current = recipe.recipe_hash(wheels.file_sha256(llama))
    made = write_image(settings, current)
    assert builder.build_image(settings) == made
    assert not (settings.cache / "logs").exists()  # no build was even started


@needs_root
def test_build_checks_disk_space_first(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_llama_wheel(settings)
    monkeypatch.setattr(builder, "NEED_FREE_BYTES", 1 << 60)
    with pytest.raises(InsufficientResources):
        builder.build_image(settings)
    assert catalog.list_images(settings) == []
    assert not list(settings.images_dir.glob("base-*")) and not list(
        settings.wheels_dir.glob("guest-*")
    )


def test_a_long_build_step_reports_that_it_still_runs(tmp_path: Path) -> None:
    """The llama wheel compiles for minutes: the heartbeat shows its last [ NN%] mark."""
    from images.plumbing import BuildLog

    lines: list[str] = []
    log = BuildLog(tmp_path / "build.log", lines.append)
    log.run("demo", ["sh", "-c", "echo '[ 10%] a'; sleep 0.7; echo '[ 55%] b'; sleep 0.7"],
            heartbeat_s=0.5)
    assert len(lines) >= 2 and "still running" in lines[0]
    assert lines[0].endswith("at 10%") and lines[-1].endswith("at 55%")
