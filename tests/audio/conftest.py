"""The echo tests use the media tests' real fixtures: nginx-rtmp, the SRT program and the site configuration."""

from tests.media.conftest import make_config, rtmp_server, srt_program  # noqa: F401
