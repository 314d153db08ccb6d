"""A small SYNTHETIC multi-camera driving data set in the real nuScenes v1.0 layout, for demos and tests.

Each scene is procedural: an ego car drives at 3-8 m/s along a gently curving road (2 Hz keyframes, known
poses) past 4-10 annotated objects with nuScenes-like sizes - cars (moving in the other lanes, parked,
stopped), adult pedestrians (walking or standing on sidewalks and grass) and barriers - and unannotated
clutter 35-60 m away (buildings with windows, trees). Six pinhole cameras in nuScenes's ring (x right, y
down, z forward) see it: ground and sky by vectorised ray casting into a world-fixed texture (asphalt noise,
lane markings, repair patches, stains, crosswalks, sidewalks, grass; a sky gradient with soft clouds), and
cuboids as Lambert-shaded faces (sun fixed per scene) drawn far to near (painter's algorithm) after
Sutherland-Hodgman clipping at z = 0.1 m, at twice the size and averaged down. Cameras fire 0-42 ms after the
keyframe (CAM_FRONT first), each with its own ego pose, as nuScenes's do.

``num_lidar_pts`` is a stand-in for lidar points: the number of image pixels where the object is visible (not
occluded), summed over the cameras; the visibility level bins the visible share of those pixels. Every object
within 40 m of the ego is annotated, seen or not, so evaluators drop the unseen ones as the devkit does.
It is not real imagery and says nothing about real performance.

Modules, from the world up: :mod:`.world` (constants, road, ground texture), :mod:`.objects` (annotated
objects and their motion, clutter), :mod:`.scene` (ego path, camera rig, rays), :mod:`.render` (one camera
view) and :mod:`.write` (the nuScenes tables and JPEGs).
"""

from pipelines.datasets.nuscenes_demo.objects import DemoObject
from pipelines.datasets.nuscenes_demo.render import render_view
from pipelines.datasets.nuscenes_demo.scene import DemoScene, make_demo_scene
from pipelines.datasets.nuscenes_demo.world import CAMERA_RIG
from pipelines.datasets.nuscenes_demo.write import write_demo_nuscenes

__all__ = ["CAMERA_RIG", "DemoObject", "DemoScene", "make_demo_scene", "render_view", "write_demo_nuscenes"]
