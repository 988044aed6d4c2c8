"""The host network, its slots and seeds, blueprints, the seed lifecycle and blending."""
