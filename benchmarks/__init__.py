"""`make bench`: measured figures, each beside a reference measured in the same run."""
