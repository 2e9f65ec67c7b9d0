"""First-party plugins of study, registered through the study.plugins entry points."""
