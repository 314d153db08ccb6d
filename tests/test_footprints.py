"""Object-level footprint scores against hand-made cases with known answers, cleaning, and `pipelines score`
across formats and CRSs (a real Shapefile from ../shared/data)."""

import json

import numpy as np
import pytest

shapely = pytest.importorskip("shapely")
gpd = pytest.importorskip("geopandas")

from shapely.affinity import translate  # noqa: E402
from shapely.geometry import MultiPolygon, Polygon, box  # noqa: E402

from pipelines.cli import main  # noqa: E402
from pipelines.footprints import CleanOptions, clean_geometries, count_objects, mask_polygons, match_footprints  # noqa: E402
from pipelines.footprints.files import read_footprints, write_footprint_file  # noqa: E402
from pipelines.footprints.score import score_footprint_files  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

SQUARE = box(0, 0, 10, 10)


def shift_for(iou: float, side: float = 10.0) -> float:
    """The x shift of a side x side square that overlaps the original with this IoU: (s-d)/(s+d) = iou."""
    return side * (1 - iou) / (1 + iou)


@pytest.mark.parametrize("iou", [0.3, 0.49, 0.5, 0.51, 0.75, 1.0])
def test_a_shifted_square_is_found_exactly_from_iou_one_half(iou):
    moved = translate(SQUARE, shift_for(iou), 0)
    matches = match_footprints([moved], [SQUARE])
    assert (len(matches) == 1) == (iou >= 0.5)
    if matches:
        assert matches[0][2] == pytest.approx(iou)
    c = count_objects([moved], [SQUARE], min_area=0)
    assert (c.true, c.predicted, c.matched) == (1, 1, int(iou >= 0.5))
    assert c.f1 == (1.0 if iou >= 0.5 else 0.0)


def test_one_to_one_the_largest_iou_first():
    # two predictions overlap one true square (IoU 0.8 and 0.6): one match, the better one; the other is false
    good, fair = translate(SQUARE, shift_for(0.8), 0), translate(SQUARE, -shift_for(0.6), 0)
    assert [(p, t) for p, t, _ in match_footprints([fair, good], [SQUARE])] == [(1, 0)]
    c = count_objects([fair, good], [SQUARE], min_area=0)
    assert (c.matched, c.precision, c.recall) == (1, 0.5, 1.0) and c.f1 == pytest.approx(2 / 3)
    # one prediction over two true squares: at most one of them
    wide = box(0, 0, 20, 10)
    c = count_objects([wide], [SQUARE, translate(SQUARE, 10, 0)], min_area=0)
    assert (c.true, c.predicted, c.matched) == (2, 1, 1) and c.ious == (0.5,)
    # a MultiPolygon feature is one footprint: its two parts, predicted apart, have IoU 0.5 each; one matches
    pair = MultiPolygon([SQUARE, translate(SQUARE, 30, 0)])
    c = count_objects([SQUARE, translate(SQUARE, 30, 0)], [pair], min_area=0)
    assert (c.true, c.predicted, c.matched) == (1, 2, 1) and c.ious == (0.5,)


def test_holes_count_in_the_iou_and_small_footprints_are_left_out():
    ring = Polygon(SQUARE.exterior, [box(2, 2, 8, 8).exterior])  # area 64
    # the filled square against the ring: IoU 64 / 100
    assert match_footprints([SQUARE], [ring], 0.5)[0][2] == pytest.approx(0.64)
    assert match_footprints([SQUARE], [ring], 0.7) == []
    speck = box(50, 50, 54, 54)  # 16 px: under SpaceNet's 20
    c = count_objects([SQUARE, speck], [SQUARE])
    assert (c.true, c.predicted, c.matched) == (1, 1, 1)
    c = count_objects([], [SQUARE, speck])
    assert (c.true, c.predicted, c.f1, c.precision) == (1, 0, 0.0, None)
    assert count_objects([], []).f1 is None


def test_mask_polygons_are_the_connected_regions_with_their_pixel_areas():
    mask = np.zeros((40, 40), np.uint8)
    mask[2:12, 2:12] = 1
    mask[5:8, 5:8] = 0  # a 9 px hole
    mask[20:30, 20:25] = 1
    mask[30:32, 25:27] = 1  # touches only at a corner: 4-connectivity keeps it apart
    polys = sorted(mask_polygons(mask), key=lambda p: -p.area)
    assert [p.area for p in polys] == [91, 50, 4] and len(polys[0].interiors) == 1
    assert mask_polygons(np.zeros((5, 5), np.uint8)) == []
    c = count_objects(mask_polygons(mask), mask_polygons(mask))
    assert (c.true, c.matched, c.f1) == (2, 2, 1.0)  # the 4 px region is under the minimum on both sides


def test_run_scorer_cuts_nodata_out_and_scores_each_cleaning_step(tmp_path):
    from pipelines.footprints.evaluation import ObjectScorer, draw_footprints

    target = np.zeros((64, 64), np.uint8)
    target[4:14, 4:14] = target[30:40, 30:40] = target[50:60, 2:12] = 1
    pred = target.copy()
    pred[50:60, 2:12] = 0  # one missed
    pred[4:14, 40:50] = 1  # one false, in no-data
    valid = np.ones_like(target, bool)
    valid[:, 38:] = False
    scorer = ObjectScorer({"bootstrap": 0})
    scorer.add(pred, target, valid)
    scorer.add(target, target)  # a perfect tile
    s = scorer.summary(bootstrap=50)
    assert (s["true"], s["predicted"], s["matched"]) == (6, 5, 5) and s["f1"] == pytest.approx(10 / 11, abs=1e-4)
    assert set(s["by_cleaning"]) == {"configured", "none", "fill_holes", "simplify", "regularize"}
    assert scorer.columns()["objects_matched"] == [2, 3] and len(s["ci95"]["f1"]) == 2
    image = np.zeros((64, 64, 3), np.uint8)
    predicted, truth = scorer.footprints(pred, target, valid)
    draw_footprints(image, predicted, truth, 0.5, 20, tmp_path / "f.png")
    from PIL import Image

    drawn = np.asarray(Image.open(tmp_path / "f.png"))
    assert drawn[4, 4:14, 1].max() > 150 and drawn[50, 2:12, 2].max() > 150  # matched green; missed: blue only


def test_cleaning_fills_small_holes_drops_specks_and_squares_a_ragged_outline():
    rng = np.random.default_rng(0)
    mask = np.zeros((60, 60), np.uint8)
    mask[10:40, 10:50] = 1
    mask[20:22, 20:22] = 0  # 4 px hole
    mask[10, 10:50] = rng.integers(0, 2, 40)  # a ragged edge
    mask[55:57, 55:57] = 1  # a speck
    polys = mask_polygons(mask)
    assert len(polys) == 2
    cleaned = clean_geometries(polys, CleanOptions(min_area=20, fill_holes=10))
    assert len(cleaned) == 1 and not cleaned[0].interiors
    squared = clean_geometries(polys, CleanOptions(min_area=20, regularize=True, simplify=1.0))
    assert len(squared) == 1 and len(squared[0].exterior.coords) <= 6  # a rectangle (closed ring: 5 points)
    assert squared[0].area == pytest.approx(polys[0].area, rel=0.1)
    edges = np.diff(np.asarray(squared[0].exterior.coords), axis=0)
    angles = np.degrees(np.arctan2(edges[:, 1], edges[:, 0]))
    turns = (np.diff(np.r_[angles, angles[0]]) + 360) % 180
    assert np.allclose(np.minimum(turns, 180 - turns), 90, atol=1)  # right angles
    simple = clean_geometries(polys, CleanOptions(simplify=1.5))
    assert len(simple[0].exterior.coords) < len(polys[0].exterior.coords)
    with pytest.raises(Exception, match="min_area"):
        CleanOptions(min_area=-1)


def _utm_squares(offsets, size=10.0, crs="EPSG:32618"):
    x0, y0 = 500000.0, 4100000.0
    return gpd.GeoDataFrame({"id": list(range(len(offsets)))},
                            geometry=[translate(box(x0, y0, x0 + size, y0 + size), 30 * i + dx, 0)
                                      for i, dx in enumerate(offsets)], crs=crs)


def test_score_across_formats_and_crss(tmp_path, capsys):
    ref = _utm_squares([0, 0, 0, 0])
    pred = _utm_squares([0, shift_for(0.6), shift_for(0.4), 0]).iloc[:3]  # 2 found, 1 missed, 1 absent
    pred = pd_concat(pred, _utm_squares([0], size=3).set_geometry(
        _utm_squares([0], size=3).geometry.translate(500, 0)))  # a false footprint far away: outside the area
    write_footprint_file(ref, tmp_path / "ref.gpkg")
    write_footprint_file(pred.to_crs("EPSG:4326"), tmp_path / "pred.geojson")  # lon/lat on one side
    table = score_footprint_files(tmp_path / "pred.geojson", tmp_path / "ref.gpkg")
    s = table.summary
    assert (s["true"], s["predicted"], s["matched"]) == (4, 3, 2) and s["f1"] == pytest.approx(4 / 7, abs=1e-4)
    assert s["units"] == "m" and "32618" in s["crs"]
    # the area-level scores: 3 x 100 m² predicted inside, overlaps 100 + 60/0.6*... computed by hand
    inter = 100 + 10 * (10 - shift_for(0.6)) + 10 * (10 - shift_for(0.4))
    assert s["area"]["iou"] == pytest.approx(inter / (400 + 300 - inter), abs=1e-3)
    # the reference in lon/lat instead: the work moves to its UTM zone and the answer stays
    write_footprint_file(ref.to_crs("EPSG:4326"), tmp_path / "ref.fgb")
    again = score_footprint_files(tmp_path / "pred.geojson", tmp_path / "ref.fgb").summary
    assert (again["true"], again["predicted"], again["matched"]) == (4, 3, 2) and "326" in again["crs"]
    # tiles as the scored areas: one row each and an overall row
    tiles = gpd.GeoDataFrame({"tile": ["a", "b"]}, geometry=[box(499990, 4099990, 500055, 4100020),
                                                              box(500055, 4099990, 500200, 4100020)], crs=ref.crs)
    write_footprint_file(tiles, tmp_path / "tiles.geojson")
    per = score_footprint_files(tmp_path / "pred.geojson", tmp_path / "ref.gpkg", tmp_path / "tiles.geojson")
    assert [r["area"] for r in per.rows] == ["a", "b", "all"]
    assert [(r["true"], r["matched"]) for r in per.rows] == [(2, 2), (2, 0), (4, 2)]

    out = tmp_path / "score.csv"
    assert main(["score", str(tmp_path / "pred.geojson"), str(tmp_path / "ref.gpkg"), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "F1 0.571" in printed and out.is_file() and json.loads(out.with_suffix(".json").read_text())["f1"]
    assert main(["score", str(tmp_path / "missing.geojson"), str(tmp_path / "ref.gpkg")]) == 2
    assert "no such footprint file" in capsys.readouterr().err


def pd_concat(a, b):
    import pandas as pd

    both = gpd.GeoDataFrame(pd.concat([a, b], ignore_index=True), crs=a.crs)
    both["id"] = range(len(both))
    return both


def test_score_refuses_a_layer_without_crs_beside_one_with_and_a_layer_of_points(tmp_path, capsys):
    write_footprint_file(_utm_squares([0]), tmp_path / "ref.gpkg")
    write_footprint_file(gpd.GeoDataFrame(geometry=[SQUARE]), tmp_path / "bare.gpkg")  # (GeoJSON means lon/lat)
    assert main(["score", str(tmp_path / "bare.gpkg"), str(tmp_path / "ref.gpkg")]) == 2
    assert "has no CRS" in capsys.readouterr().err
    # pixel coordinates in a GeoJSON (whose CRS is lon/lat by definition) land off the globe: said, not crashed
    write_footprint_file(gpd.GeoDataFrame(geometry=[box(0, 0, 900, 900)]), tmp_path / "pixels.geojson")
    assert main(["score", str(tmp_path / "pixels.geojson"), str(tmp_path / "ref.gpkg")]) == 2
    assert "pixels.geojson" in capsys.readouterr().err
    gpd.GeoDataFrame(geometry=[shapely.Point(0, 0)], crs="EPSG:32618").to_file(tmp_path / "points.geojson")
    assert main(["score", str(tmp_path / "points.geojson"), str(tmp_path / "ref.gpkg")]) == 2
    assert "holds no polygons" in capsys.readouterr().err


def test_a_real_shapefile_scores_against_itself_moved_and_reprojected(tmp_path):
    shp = SHARED / "data" / "geotiff" / "deepforest" / "australia.shp"  # a tree crown in UTM 53S (EPSG:32753)
    real = read_footprints(shp)
    assert len(real) == 1 and real.crs.to_epsg() == 32753
    width = real.total_bounds[2] - real.total_bounds[0]
    moved = real.copy()
    moved.geometry = real.geometry.translate(width * 0.1, 0)
    write_footprint_file(moved.to_crs("EPSG:4326"), tmp_path / "moved.fgb")
    s = score_footprint_files(tmp_path / "moved.fgb", shp, area=SHARED / "data" / "geotiff" / "deepforest" /
                              "australia.tif", min_area=1.0).summary
    a, b = real.geometry.iloc[0], moved.geometry.iloc[0]
    expected = a.intersection(b).area / a.union(b).area  # in UTM, by shapely directly
    assert (s["true"], s["predicted"], s["matched"]) == (1, 1, 1) and s["match_iou"]["mean"] == pytest.approx(
        expected, abs=2e-3)


def test_a_tile_mask_scores_as_objects_and_pixels_on_its_valid_area(tmp_path, capsys):
    """``pipelines score MASK.tif REFERENCE``: the mask's regions are the footprints, its valid pixels the
    area, so the area scores are the pixel scores against the rasterised reference."""
    import rasterio
    from rasterio.transform import from_origin

    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:15] = 1  # equals the first true square
    mask[5:15, 37:45] = 1  # 8 of the second square's 10 columns: IoU 0.8
    mask[25:28, 50:53] = 1  # a false positive of 9 px
    mask[:, 55:] = 255  # nodata: the true square there is outside the scored area
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=60, height=40, count=1, dtype="uint8",
                       crs="EPSG:32618", transform=from_origin(500000, 4100040, 1, 1), nodata=255) as ds:
        ds.write(mask, 1)
    x0, y_top = 500000, 4100040
    ref = gpd.GeoDataFrame(geometry=[box(x0 + 5, y_top - 15, x0 + 15, y_top - 5),
                                     box(x0 + 35, y_top - 15, x0 + 45, y_top - 5),
                                     box(x0 + 56, y_top - 15, x0 + 59, y_top - 5)], crs="EPSG:32618")
    write_footprint_file(ref, tmp_path / "ref.gpkg")
    s = score_footprint_files(tmp_path / "scene.tif", tmp_path / "ref.gpkg", min_area=5).summary
    assert (s["true"], s["predicted"], s["matched"]) == (2, 3, 2) and s["f1"] == pytest.approx(0.8, abs=1e-4)
    tp, pred, true = 100 + 80, 100 + 80 + 9, 200
    assert s["area"]["iou"] == pytest.approx(tp / (pred + true - tp), abs=1e-4)
    assert s["area"]["precision"] == pytest.approx(tp / pred, abs=1e-4)
    assert s["inputs"]["area"] == "the mask's valid pixels"
    probs = tmp_path / "probs.tif"
    with rasterio.open(probs, "w", driver="GTiff", width=4, height=4, count=1, dtype="float32", crs="EPSG:32618",
                       transform=from_origin(500000, 4100040, 1, 1)) as ds:
        ds.write(np.zeros((1, 4, 4), np.float32))
    assert main(["score", str(probs), str(tmp_path / "ref.gpkg")]) == 2
    assert "not a one-band uint8 mask" in capsys.readouterr().err
