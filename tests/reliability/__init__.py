"""The reliability suite: faults a long run must survive and inputs it must refuse (RELIABILITY.md)."""
