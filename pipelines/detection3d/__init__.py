"""Multi-view 3D detection (ToC3D on nuScenes-format data): geometry, the token-compressed ViT, a
StreamPETR-like head, nuScenes detection metrics, and the training/evaluation loop."""
