"""Building footprints as GIS users judge them: object-level (SpaceNet) scores, cleaned polygons, and the
vector formats GIS tools open. Needs the ``geo`` extra (shapely, geopandas, pyogrio, buildingregulariser)."""

from pipelines.footprints.clean import CleanOptions, clean_footprints, clean_geometries
from pipelines.footprints.objects import ObjectCounts, count_objects, mask_polygons, match_footprints, object_summary

__all__ = ["CleanOptions", "clean_footprints", "clean_geometries", "ObjectCounts", "count_objects", "mask_polygons",
           "match_footprints", "object_summary"]
