"""The OS process backend: jobs run as processes of this machine, each watched by a reaper."""
