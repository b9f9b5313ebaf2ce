"""Episode recording: the cell's streams and commanded chunks into MCAP files of ROS 2 messages.

* :class:`~demuse_ros.record.recorder.Recorder` drains the camera, F/T and arm
  rings (every record once, losses counted) into one file per episode;
* :class:`~demuse_ros.record.writer.EpisodeWriter` writes a file off the caller's
  thread with a byte-bounded queue;
* :func:`~demuse_ros.record.reader.open_episode` reads one back (numpy values,
  exact monotonic stamps); :func:`~demuse_ros.record.recover.recover` repairs an
  interrupted one.

The submodules import ``mcap``/``mcap_ros2`` only when a file is opened.
"""

from demuse_ros.record.episode import RecorderConfig
from demuse_ros.record.meta import EpisodeMeta
from demuse_ros.record.reader import EpisodeError, open_episode
from demuse_ros.record.recorder import Recorder
from demuse_ros.record.recover import recover
from demuse_ros.record.writer import EpisodeWriter

__all__ = [
    "EpisodeError",
    "EpisodeMeta",
    "EpisodeWriter",
    "Recorder",
    "RecorderConfig",
    "open_episode",
    "recover",
]
