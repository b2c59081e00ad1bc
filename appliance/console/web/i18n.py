"""The dashboard's words: Bahasa Indonesia first, English on `?lang=en` (kept in the session)."""

from __future__ import annotations

LANGS = ("id", "en")
DEFAULT_LANG = "id"

_TEXT: dict[str, tuple[str, str]] = {
    # key: (Bahasa Indonesia, English)
    "app": ("Dasbor Rapat", "Rapat dashboard"),
    "fleet": ("Armada", "Fleet"),
    "meeting": ("Rapat", "Meeting"),
    "rollout": ("Target Oktober", "October target"),
    "login": ("Masuk", "Log in"),
    "logout": ("Keluar", "Log out"),
    "username": ("Nama pengguna", "Username"),
    "password": ("Kata sandi", "Password"),
    "login_failed": ("Nama pengguna atau kata sandi salah.", "Wrong username or password."),
    "login_limited": ("Terlalu banyak percobaan gagal. Coba lagi dalam {s} detik.",
                      "Too many failed attempts. Try again in {s} seconds."),
    "broker_down": ("Broker tidak terjangkau: data di bawah ini BUKAN data langsung.",
                    "Broker unreachable: what is shown below is NOT live."),
    "site": ("Lokasi", "Site"), "kind": ("Jenis", "Kind"), "state": ("Status", "State"),
    "health": ("Kesehatan", "Health"), "version": ("Versi", "Version"), "last_seen": ("Terakhir terlihat", "Last seen"),
    "uptime_today": ("Aktif hari ini", "Up today"), "floor": ("Lantai", "Floor"), "problem": ("Masalah", "Problem"),
    "all": ("Semua", "All"), "any_problem": ("Ada masalah", "Any problem"), "offline": ("Luring", "Offline"),
    "selftest": ("Uji mandiri", "Self-test"), "update": ("Pembaruan", "Update"),
    "filter_kind": ("Saring jenis", "Filter kind"), "filter_problem": ("Saring masalah", "Filter problem"),
    "sites_online": ("{n} lokasi, {online} daring, {meeting} dalam rapat", "{n} sites, {online} online, {meeting} in a meeting"),
    "map": ("Peta kabupaten", "Regency map"), "no_map": ("Belum ada koordinat (kolom lat,lon di CSV lokasi).",
                                                          "No coordinates yet (lat,lon columns in the sites CSV)."),
    "now": ("sekarang", "now"), "never": ("belum pernah", "never"), "ago": ("{t} lalu", "{t} ago"),
    "start_meeting": ("Mulai rapat", "Start a meeting"), "title": ("Judul", "Title"),
    "sites": ("Lokasi (a,b,c)", "Sites (a,b,c)"), "group": ("Kelompok", "Group"), "none": ("—", "—"),
    "mode": ("Mode", "Mode"), "moderated": ("Dimoderasi", "Moderated"), "open": ("Terbuka", "Open"),
    "program_url": ("URL program", "Program URL"),
    "earlier_streams": ("Siaran rapat sebelumnya", "Streams of earlier meetings"),
    "ingest_url": ("URL kirim ({site} = id lokasi)", "Ingest URL ({site} = site id)"),
    "auto_join": ("Gabung otomatis", "Join automatically"), "start": ("Mulai", "Start"),
    "end_meeting": ("Akhiri rapat", "End the meeting"), "no_meeting": ("Tidak ada rapat berjalan.", "No meeting is running."),
    "speaking": ("Berbicara", "Speaking"), "hands": ("Angkat tangan", "Raised hands"), "listening": ("Mendengar", "Listening"),
    "waiting": ("menunggu", "waiting"), "grant": ("Beri lantai", "Give the floor"), "revoke": ("Cabut", "Take back"),
    "nobody": ("tidak ada", "nobody"), "no_hands": ("Tidak ada yang angkat tangan.", "No raised hands."),
    "uplink": ("Kirim", "Uplink"), "acks": ("Jawaban perintah", "Command answers"),
    "answered": ("menjawab", "answered"), "not_answered": ("belum menjawab", "not answered"),
    "result": ("Hasil", "Result"), "ms": ("ms", "ms"), "by": ("oleh", "by"),
    "viewer_note": ("Akun peninjau: hanya melihat.", "Viewer account: view only."),
    "recent_events": ("Kejadian terbaru", "Recent events"), "telemetry": ("Telemetri", "Telemetry"),
    "cpu_temp": ("Suhu CPU (°C)", "CPU temperature (°C)"), "memory": ("Memori bebas (MB)", "Free memory (MB)"),
    "reconnects": ("Sambung ulang MQTT", "MQTT reconnects"), "uptime_days": ("Hari aktif", "Uptime days"),
    "date": ("Tanggal", "Date"), "up": ("Aktif", "Up"), "connected": ("Terhubung", "Connected"),
    "in_meeting_h": ("Dalam rapat", "In meetings"), "no_data": ("Belum ada data.", "No data yet."),
    "last_selftest": ("Uji mandiri terakhir", "Last self-test"), "passed": ("LULUS", "PASSED"), "failed": ("GAGAL", "FAILED"),
    "check": ("Pemeriksaan", "Check"), "detail": ("Rincian", "Detail"), "problems": ("Masalah", "Problems"),
    "local_time": ("Waktu setempat", "Local time"), "software": ("Perangkat lunak", "Software"),
    "ready": ("siap", "ready"), "registered": ("terdaftar", "registered"), "days_left": ("hari lagi", "days left"),
    "not_ready": ("Belum siap", "Not ready"), "why": ("Alasan", "Why"), "travel": ("Perjalanan dihindari", "Travel avoided"),
    "error": ("Galat", "Error"), "sent": ("Terkirim", "Sent"), "in_meeting": ("dalam rapat", "in meeting"),
    "state_idle": ("siaga", "idle"), "state_in_meeting": ("dalam rapat", "in meeting"),
    "state_meeting_available": ("rapat diumumkan", "meeting announced"), "state_offline": ("luring", "offline"),
    "state_never seen": ("belum terlihat", "never seen"), "state_joining": ("bergabung", "joining"),
    "state_selftest": ("uji mandiri", "self-test"), "state_updating": ("memperbarui", "updating"),
    "floor_speaking": ("berbicara", "speaking"), "floor_requested": ("angkat tangan", "hand raised"),
    "floor_listening": ("mendengar", "listening"),
    "ok": ("ok", "ok"), "refused": ("ditolak", "refused"), "no answer": ("tanpa jawaban", "no answer"),
    "never seen": ("belum terlihat", "never seen"),
}


def lang_of(value: str | None) -> str:
    return value if value in LANGS else DEFAULT_LANG


def translator(lang: str):  # noqa: ANN201 - a plain function for templates
    index = LANGS.index(lang_of(lang))

    def t(key: str, **values: object) -> str:
        pair = _TEXT.get(key)
        # Unknown keys show as they are: a device state or floor status newer than this table.
        text = pair[index] if pair else key.partition("_")[2] if key.startswith(("state_", "floor_")) else key
        return text.format(**values) if values else text

    return t
