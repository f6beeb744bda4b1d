"""Deploy targets: where a release runs. The embedded default runs it as a local process."""
