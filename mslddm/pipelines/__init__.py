"""Pipelines (imported lazily through ``mslddm``)."""
