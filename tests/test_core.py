"""The bottom layer: layering, safe image reading (the same guards for every reader), atomic writes."""

import ast
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.core.errors import DataError, one_line
from pipelines.core.images import check_image_files, decode_image, image_size, read_image
from pipelines.core.io import atomic_link, atomic_write_text, file_sha256

PACKAGE = Path(__file__).resolve().parents[1] / "pipelines"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("pipelines")}


def test_core_imports_nothing_else_of_ours():
    for path in (PACKAGE / "core").glob("*.py"):
        outside = {n for n in _imports(path) if not n.startswith("pipelines.core")}
        assert not outside, f"{path.name} imports {outside}"


@pytest.mark.parametrize("layer", ["backbones", "datasets", "transforms"])
def test_lower_layers_do_not_import_training_or_tasks(layer):
    allowed = ("pipelines.core", "pipelines.config", f"pipelines.{layer}", "pipelines.backbones",
               "pipelines.datasets", "pipelines.transforms")
    for path in (PACKAGE / layer).glob("*.py"):
        bad = {n for n in _imports(path) if not n.startswith(allowed)}
        assert not bad, f"{layer}/{path.name} imports {bad}"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_16_bit_greyscale_is_refused_by_every_reader_not_turned_white(tmp_path):
    path = tmp_path / "grey16.png"
    path.write_bytes(_png(np.arange(64, dtype=np.uint16).reshape(8, 8) * 257))
    with pytest.raises(DataError, match=r"grey16\.png has 1 channel.*mode I;16.*save it as an 8-bit") as info:
        read_image(path)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="mode I;16"):
        check_image_files([path])
    with pytest.raises(DataError, match="mode I;16"):
        decode_image(path.read_bytes(), "grey16.png", colour="any")


def test_truncated_and_missing_files_are_one_line_naming_the_file(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:3000])
    assert read_image(good).shape == (64, 64, 3) and image_size(good) == (64, 64)
    with pytest.raises(DataError, match=r"cut\.png is corrupt or truncated"):
        read_image(cut)
    with pytest.raises(DataError, match=r"cut\.png"):
        check_image_files([good, cut])
    with pytest.raises(DataError, match=r"missing\.png does not exist"):
        read_image(tmp_path / "missing.png")


def test_oversized_images_are_refused_from_the_header(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (4000, 3000)).save(path)
    from pipelines.core import images

    with pytest.raises(DataError, match=r"big\.png is 4000x3000 pixels"), images.open_image(path, max_pixels=1_000_000):
        pass


def test_one_line_keeps_the_original_message_of_a_worker_error():
    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File x\npipelines.core.errors.DataError: bad image a.png; remove it")
    assert one_line(wrapped) == "bad image a.png; remove it"
    assert one_line(ValueError("a\n b")) == "ValueError: a b"


def test_atomic_write_and_hash(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert file_sha256(tmp_path / "a" / "b.txt").startswith("2cf24dba")
    assert not list((tmp_path / "a").glob(".*.tmp"))


def test_a_linked_file_keeps_its_content_when_the_source_is_rewritten(tmp_path):
    """best.safetensors is linked to last.safetensors on an improved epoch; the next epoch's last must not
    change the best one."""
    last, best = tmp_path / "last", tmp_path / "best"
    atomic_write_text(last, "epoch 1")
    atomic_link(last, best)
    atomic_write_text(last, "epoch 2")
    assert best.read_text() == "epoch 1" and last.read_text() == "epoch 2"
    atomic_link(last, best)
    assert best.read_text() == "epoch 2" and not list(tmp_path.glob(".*.tmp"))

