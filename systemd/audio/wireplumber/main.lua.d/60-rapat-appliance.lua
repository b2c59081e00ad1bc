-- The appliance's session manager: sound cards only. The camera belongs to the uplink (picamera2 or
-- V4L2 through ffmpeg); a session manager that opened it too would take it away from the meeting.
v4l2_monitor.enabled = false
libcamera_monitor.enabled = false
-- Device reservation talks to other sound servers over the session bus; there are none here.
alsa_monitor.properties["alsa.reserve"] = false
