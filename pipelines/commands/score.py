"""``pipelines score``: its arguments and what it does."""

from __future__ import annotations

from pathlib import Path

from pipelines.footprints.objects import IOU_THRESHOLD, MIN_AREA

__all__ = ["add_score_parser"]


def add_score_parser(sub) -> None:
    sc = sub.add_parser("score", help="object-level (SpaceNet, IoU >= 0.5) and area-level scores of footprints "
                        "against reference footprints; any GDAL vector format and CRS on either side")
    sc.add_argument("footprints", help="predicted footprints (GeoJSON, GeoPackage, FlatGeobuf, Shapefile, ...), "
                    "or the 0/1 mask GeoTIFF 'pipelines tile' writes (scored on its valid pixels)")
    sc.add_argument("reference", help="true footprints, any vector format")
    sc.add_argument("--area", metavar="FILE", help="the scored area: polygons of tiles (one row each; a 'tile' or "
                    "'name' column names them) or a raster (its bounds); default: the reference's bounding box")
    sc.add_argument("--iou", type=float, default=IOU_THRESHOLD, help="IoU for a match (default: 0.5, SpaceNet's)")
    sc.add_argument("--min-area", type=float, default=MIN_AREA,
                    help="footprints smaller than this, in the CRS's units squared (m²), are left out on both sides "
                         "(default: 20, SpaceNet's 20 px at 1 m; scale it with your pixel size)")
    sc.add_argument("--output", metavar="FILE.csv", help="write the table (one row per area) here and the "
                    "overall scores with the IoU distribution beside it as FILE.json")
    sc.set_defaults(func=cmd_score)


def cmd_score(args) -> int:
    from pipelines.core.io import write_csv, write_json
    from pipelines.footprints.score import COLUMNS, score_footprint_files

    table = score_footprint_files(args.footprints, args.reference, args.area, args.iou, args.min_area)
    for line in table.lines():
        print(line)
    if args.output:
        import pandas as pd

        out = Path(args.output)
        write_csv(out, pd.DataFrame(table.rows, columns=COLUMNS))
        write_json(out.with_suffix(".json"), table.summary)
        print(out)
    return 0
