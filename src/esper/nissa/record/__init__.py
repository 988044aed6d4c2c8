"""The record: the JSONL writer and run directories, the reader and replay, and how runs ended."""
