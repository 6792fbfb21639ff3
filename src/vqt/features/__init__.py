"""Feature stores: per-block frozen tokens extracted once, so training epochs never run the backbone."""

from vqt.features.extract import extract_features, request_meta
from vqt.features.store import FeatureStore, check_meta, is_complete, open_store

__all__ = ["FeatureStore", "check_meta", "extract_features", "is_complete", "open_store", "request_meta"]
