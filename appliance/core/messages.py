"""The message catalogue: every text a person reads in a self-test result or a configuration problem,
in Bahasa Indonesia (first: the fleet's language, the default everywhere) and English, under a stable
code. Translations live here and nowhere else; the code and the parameters are what machines read.

Pure data and formatting, so the core, the configuration checks, provisioning and the console share it.
Texts stay plain ASCII apart from the names they quote: a technician's Windows console may not show more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

LANGUAGES = ("id", "en")
DEFAULT_LANGUAGE = "id"
# The environment variable the command-line tools read for their language (not LANG: Raspberry Pi OS
# and most laptops set that to English, which would make English the default everywhere).
LANGUAGE_VARIABLE = "APPLIANCE_LANG"

# code: (Bahasa Indonesia, English)
CATALOGUE: dict[str, tuple[str, str]] = {
    # --- the self-test's screen and summary ------------------------------------------------------
    "selftest.title": ("Uji mandiri", "Self-test"),
    "selftest.press_now": ("Tekan tombol sekarang", "Press the button now"),
    "selftest.press_hint": ("Lampu tombol berkedip pola uji. {seconds} detik.",
                            "The button light shows its test pattern. {seconds} seconds."),
    "selftest.running": ("Uji mandiri berjalan…", "Self-test running…"),
    "selftest.all_ok": ("Semua pemeriksaan lulus", "All checks passed"),
    "selftest.failed": ("Ada pemeriksaan yang gagal", "Some checks failed"),
    "selftest.verdict.ok": ("lulus", "passed"),
    "selftest.verdict.fail": ("GAGAL", "FAILED"),
    "selftest.verdict.skip": ("tidak diuji", "not tested"),
    "selftest.outcome.passed": ("LULUS", "PASSED"),
    "selftest.outcome.failed": ("GAGAL", "FAILED"),
    "selftest.check.panel": ("Tombol", "Button"),
    "selftest.check.camera": ("Kamera", "Camera"),
    "selftest.check.display": ("Layar", "Screen"),
    "selftest.check.audio": ("Mikrofon", "Microphone"),
    "selftest.check.broker": ("Koneksi ke pusat", "Connection to the centre"),
    "selftest.check.clock": ("Jam", "Clock"),
    "selftest.check.disk": ("Kartu SD", "SD card"),
    "selftest.check.power": ("Catu daya", "Power supply"),
    "selftest.press_prompt": ("Tekan tombol panel sekarang (30 detik)", "Press the panel button now (30 s)"),
    # --- the self-test's details, check by check ------------------------------------------------
    "selftest.crashed": ("pemeriksaan gagal berjalan: {error}", "check crashed: {error}"),
    "selftest.no_answer": ("pemeriksaan tidak menjawab dalam {seconds} detik",
                           "the probe gave no answer within {seconds} s"),
    "selftest.unfinished.meeting": ("tidak selesai: situs bergabung ke rapat",
                                    "not finished: the site joined a meeting"),
    "selftest.panel.needs_person": (
        "perlu orang di lokasi: tahan tombol 10 detik saat tidak ada rapat, "
        "atau jalankan `appliance selftest --interactive`",
        "needs a person at the site: hold the button for 10 s while idle, "
        "or run `appliance selftest --interactive`"),
    "selftest.panel.pressed": ("tombol ditekan setelah {seconds} detik; pola uji lampu ditampilkan",
                               "button pressed after {seconds} s; LED test pattern shown"),
    "selftest.panel.no_press": ("tombol tidak ditekan dalam {seconds} detik", "no press within {seconds} s"),
    "selftest.broker.round_trip": ("pesan uji sampai dan dijawab dalam {ms} ms", "round trip {ms} ms"),
    "selftest.broker.not_connected": ("tidak terhubung ke broker ({reason})", "not connected to the broker ({reason})"),
    "selftest.broker.no_answer": ("broker tidak menjawab dalam {seconds} detik",
                                  "no answer from the broker within {seconds} s"),
    "selftest.broker.refused": ("broker menolak pesan uji: {reason}", "the broker refused the test message: {reason}"),
    "selftest.display.disabled": ("dimatikan (display.backend = none)", "disabled (display.backend = none)"),
    "selftest.display.shown": ("kartu uji ditampilkan", "test card shown"),
    "selftest.display.broken": ("layar berstatus {value}", "display is {value}"),
    "selftest.camera.disabled": ("dimatikan (camera.backend = none)", "disabled (camera.backend = none)"),
    "selftest.camera.broken": ("kamera berstatus {value}", "camera is {value}"),
    "selftest.camera.no_backend": ("kamera tidak berjalan", "no camera backend"),
    "selftest.camera.unusable": ("kamera tidak bisa dipakai: {reason}", "the camera cannot be used: {reason}"),
    "selftest.camera.in_use": ("sedang dipakai kiriman video rapat ({status})", "in use by the meeting's uplink ({status})"),
    "selftest.camera.no_ffmpeg": ("ffmpeg tidak bisa dijalankan: {error}", "cannot run ffmpeg: {error}"),
    "selftest.camera.failed": ("kamera gagal: {error}", "the camera failed: {error}"),
    "selftest.camera.frames": ("{frames} bingkai dikodekan dalam {seconds} detik ({width}x{height}@{fps})",
                               "{frames} frames encoded in {seconds} s ({width}x{height}@{fps})"),
    "selftest.clock.unknown": ("kernel tidak memberi tahu apakah jam sudah sinkron",
                               "the kernel does not say whether the clock is synchronised"),
    "selftest.clock.synced": ("sinkron (NTP)", "synchronised (NTP)"),
    "selftest.clock.unsynced": ("belum sinkron: periksa NTP / internet", "not synchronised: check NTP / internet"),
    "selftest.power.unknown": ("sistem ini tidak punya tanda throttling (bukan Raspberry Pi)",
                               "no throttling flags on this system (not a Raspberry Pi)"),
    "selftest.power.problem": ("{flags} (raw {raw}): pakai adaptor daya resmi",
                               "{flags} (raw {raw}): use the official power supply"),
    "selftest.power.ok": ("tidak ada tegangan kurang atau throttling (raw {raw})",
                          "no under-voltage or throttling (raw {raw})"),
    "selftest.disk.no_free_space": ("ruang kosong {path} tidak terbaca", "cannot read free space of {path}"),
    "selftest.disk.write_failed": ("uji tulis gagal: {error}", "write probe failed: {error}"),
    "selftest.disk.corrupt": ("uji tulis membaca kembali data yang berbeda: kartu SD rusak",
                              "write probe read back different bytes: the SD card is failing"),
    "selftest.disk.low": ("hanya {free} MB kosong (perlu {need})", "only {free} MB free (need {need})"),
    "selftest.disk.ok": ("{free} MB kosong, uji tulis baik", "{free} MB free, write probe ok"),
    "selftest.audio.not_configured": ('tidak ada mikrofon yang diatur (camera.audio_device = "")',
                                      'no microphone configured (camera.audio_device = "")'),
    "selftest.audio.no_device": ("tidak ada perangkat perekam suara (mikrofon tidak ditemukan)",
                                 "no audio capture device (no microphone found)"),
    "selftest.audio.no_arecord": ("{count} perangkat perekam, tetapi arecord (alsa-utils) tidak terpasang",
                                  "{count} capture device(s), but arecord (alsa-utils) is missing"),
    "selftest.audio.capture_failed": ("gagal merekam dari {device}: {error}", "capture from {device} failed: {error}"),
    "selftest.audio.silent": ("rekaman {seconds} detik dari {device} hening (puncak {peak})",
                              "{seconds} s capture from {device} is silent (peak {peak})"),
    "selftest.audio.ok": ("rekaman {seconds} detik dari {device}, puncak {peak}",
                          "{seconds} s capture from {device}, peak {peak}"),
    "selftest.audio.engine_down": (
        "mesin audio (PipeWire) tidak menjawab ({why}); periksa `systemctl status appliance-audio`",
        "the audio engine does not answer ({why}); the audio engine (PipeWire) runs as appliance-audio.service: "
        "`systemctl status appliance-audio`"),
    "selftest.audio.no_microphone": ("mikrofon tidak ditemukan: pasang webcam atau mikrofon USB",
                                     "no microphone found: plug in the USB webcam or microphone"),
    "selftest.audio.canceller_down": (
        "mesin audio berjalan tetapi peredam gemanya tidak ({source} dan {sink} tidak ada); "
        "daemon menyalakannya lagi, lihat log: `journalctl -u appliance`",
        "the audio engine runs but its echo canceller does not ({source} and {sink} missing); "
        "the daemon restarts it, see its log: `journalctl -u appliance`"),
    "selftest.audio.record_failed": ("tidak bisa merekam dari peredam gema: {error}",
                                     "cannot record from the echo canceller: {error}"),
    "selftest.audio.no_data": ("peredam gema berjalan, tetapi rekaman dari {source} tidak berisi data suara",
                               "echo cancellation running, but recording from {source} gave no sound data"),
    "selftest.audio.no_speaker": (
        "mikrofon {microphone}, level {level} dBFS; pengeras suara tidak ditemukan: sambungkan TV (HDMI) "
        "dan nyalakan suaranya",
        "microphone {microphone}, level {level} dBFS; no speaker found: connect the TV (HDMI) and turn its sound on"),
    "selftest.audio.mic_silent": (
        "mikrofon {microphone}, level {level} dBFS: mikrofon hening: dibisukan atau tercabut? ({error})",
        "microphone {microphone}, level {level} dBFS: the microphone is silent: is it muted or unplugged? ({error})"),
    "selftest.audio.delay_unmeasured": ("mikrofon {microphone}, level {level} dBFS; jeda gema tidak terukur: {error}",
                                        "microphone {microphone}, level {level} dBFS; echo delay not measured: {error}"),
    "selftest.audio.delay_kept": (
        "mikrofon {microphone}, level {level} dBFS; jeda gema {ms} ms dari pengukuran sebelumnya tetap dipakai ({error})",
        "microphone {microphone}, level {level} dBFS; echo delay {ms} ms kept from before ({error})"),
    "selftest.audio.delay_measured": (
        "peredam gema berjalan; mikrofon {microphone}, level {level} dBFS; jeda gema {ms} ms diukur sekarang",
        "echo cancellation running; microphone {microphone}, level {level} dBFS; echo delay {ms} ms measured now"),
    # --- configuration problems (after "FILE: section.key: ") -------------------------------------
    "config.text": ("{text}", "{text}"),
    "config.no_file": ("tidak ada berkas konfigurasi; dicari: {looked}", "no configuration file found; looked for {looked}"),
    "config.unreadable": ("berkas tidak bisa dibaca ({error})", "cannot read the file ({error})"),
    "config.bad_toml": ("bukan TOML yang sah ({error})", "not valid TOML ({error})"),
    "config.unknown_section": ("bagian tidak dikenal (yang dikenal: {known})", "unknown section (known: {known})"),
    "config.not_a_table": ("harus berupa tabel [{section}]", "must be a table [{section}]"),
    "config.unknown_key": ("kunci tidak dikenal (yang dikenal: {known})", "unknown key (known: {known})"),
    "config.required": ("wajib diisi, tetapi tidak ada", "required but missing"),
    "config.wrong_type": ("harus {kind}, bukan {value!r}", "expected {kind}, got {value!r}"),
    "config.type.str": ("teks", "a string"),
    "config.type.int": ("bilangan bulat", "a whole number"),
    "config.type.number": ("angka", "a number"),
    "config.type.bool": ("true atau false", "true or false"),
    "config.type.list": ("daftar", "a list"),
    "config.choice": ("harus salah satu dari {options}, bukan {value!r}", "must be one of {options}, not {value!r}"),
    "config.between": ("harus antara {low:g} dan {high:g}, bukan {value!r}",
                       "must be between {low:g} and {high:g}, not {value!r}"),
    "config.site_id": ("{value!r} harus cocok dengan {pattern} (huruf kecil, angka dan tanda minus)",
                       "{value!r} must match {pattern}"),
    "config.url_not_plain": ("{value!r} harus ASCII yang tercetak, tanpa spasi di awal atau akhir",
                             "{value!r} must be printable ASCII with no spaces around it"),
    "config.url_malformed": ("{value!r} bukan URL ({error})", "{value!r} is not a URL ({error})"),
    "config.url_scheme": ("{value!r} harus diawali mqtt:// atau mqtts://", "{value!r} must start with mqtt:// or mqtts://"),
    "config.url_no_host": ("{value!r} tidak menyebut host", "{value!r} names no host"),
    "config.timezone": ("{value!r} bukan zona waktu yang dikenal (mis. Asia/Jakarta)",
                        "{value!r} is not a known time zone (e.g. Asia/Jakarta)"),
    "config.hosts": ("harus berupa daftar nama host", "must be a list of host names"),
    "config.topic_prefix": ("{value!r} harus jalur topik tanpa wildcard dan tanpa '/' di awal atau akhir",
                            "{value!r} must be a topic path without wildcards or leading/trailing '/'"),
    "config.window": (
        "{value!r} harus JJ:MM-JJ:MM dalam zona waktu situs (mis. 01:00-04:00), atau kosong untuk kapan saja "
        "saat tidak ada rapat",
        "{value!r} must be HH:MM-HH:MM in the site's time zone (e.g. 01:00-04:00), or empty for any idle moment"),
    "config.window_empty": ("{value!r} adalah rentang waktu kosong", "{value!r} is an empty window"),
    "config.console_key_invalid": ("bukan kunci publik Ed25519 yang sah: {error}", "not a valid Ed25519 public key: {error}"),
    "config.console_key_required": ("wajib diisi kecuali security.allow_unsigned = true",
                                    "required unless security.allow_unsigned = true"),
    "config.password_twice": ("isi broker.password atau broker.password_file, jangan keduanya",
                              "set either broker.password or broker.password_file, not both"),
    "config.client_pair": ("client_cert_file dan client_key_file harus diisi bersama",
                           "client_cert_file and client_key_file go together"),
    "config.tls_needs_mqtts": ("berkas TLS memerlukan broker.url mqtts://", "TLS files need an mqtts:// broker.url"),
    "config.onair_pin_taken": ("GPIO {pin} sudah dipakai panel.{other}; lampu on-air perlu pin sendiri",
                               "GPIO {pin} is already panel.{other}; the on-air LED needs a pin of its own"),
    "config.psk_without_ssid": ("isi juga wifi.ssid (nama jaringan)", "set wifi.ssid too (the network's name)"),
    "config.image_only": ("hanya boleh diatur di {image_file} milik image, bukan di berkas situs",
                          "may be set only in the image's {image_file}, not in the site file"),
    "config.plain_mqtt": (
        "mqtt:// biasa (tanpa TLS) ditolak di berkas situs; pakai mqtts:// (hanya {image_file} milik image "
        "yang boleh memakai broker mqtt:// biasa, untuk lab)",
        "plain mqtt:// (no TLS) is refused in the site file; use mqtts:// (only the image's {image_file} may name "
        "a plain mqtt:// broker, for a lab)"),
    "config.file_missing": ("{path} tidak ada", "{path} does not exist"),
    "config.file_unreadable": ("{path} tidak bisa dibaca", "{path} is not readable"),
    "wifi.ssid_size": ("harus 1-32 byte (yang ini {size})", "must be 1-32 bytes (this one is {size})"),
    "wifi.ssid_control": ("tidak boleh berisi karakter kontrol", "must not contain control characters"),
    "wifi.psk_length": ("kata sandi WPA 8-63 karakter (yang ini {length}), atau 64 digit heksadesimal",
                        "a WPA passphrase is 8-63 characters (this one has {length}), or 64 hex digits"),
    "wifi.psk_ascii": ("kata sandi WPA hanya boleh huruf ASCII yang tercetak", "a WPA passphrase is printable ASCII only"),
    "wifi.country": ("{value!r} harus kode negara dua huruf seperti ID",
                     "{value!r} must be a two-letter country code such as ID"),
    "provision.host_not_plain": ("{host!r} bukan nama host biasa (tanpa skema, port, path atau wildcard)",
                                 "{host!r} is not a plain host name (no scheme, port, path or wildcard)"),
    "provision.ca_unreadable": ("tidak bisa dibaca ({error})", "cannot be read ({error})"),
    "provision.ca_not_pem": ("bukan sertifikat PEM (yang diharapkan: sertifikat CA armada dari pusat)",
                             "is not a PEM certificate (expected the fleet's CA certificate from the centre)"),
    "provision.ca_not_ca": (
        "berisi sertifikat yang bukan sertifikat CA ({subject}); yang diharapkan CA armada, bukan sertifikat server",
        "holds a certificate that is not a CA certificate ({subject}); expected the fleet's CA, not a server certificate"),
    "provision.ca_file_bad": ("{path} {reason}", "{path} {reason}"),
    "console.unknown_site": ("{site!r} bukan situs konsol ini (lihat `sites list`)",
                             "{site!r} is not a site of this console (see `sites list`)"),
    "console.other_broker": ("{given!r} bukan broker armada ini {ours!r}", "{given!r} is not this fleet's broker {ours!r}"),
    "console.other_key": ("bukan kunci konsol ini: perintah akan ditolak",
                          "is not this console's key: commands would be refused"),
    "console.stale_password": (
        "bukan kata sandi {site} yang berlaku (sudah diganti?): buat berkas baru dengan `provision {site}`",
        "is not {site}'s current password (rotated since?): write a new file with `provision {site}`"),
    # --- what the command-line tools say around the problems --------------------------------------
    "cli.config_ok": ("OK: situs {site} ({kind}), broker {url}", "OK: site {site} ({kind}), broker {url}"),
    "cli.config_note": ("catatan (diperiksa lagi di perangkat): {note}", "note (checked again on the device): {note}"),
    "cli.site_file_ok": ("{path}: perangkat akan menerimanya, dan berkas ini milik armada ini",
                         "{path}: a device would accept it, and it belongs to this fleet"),
}


def say(code: str, language: str = DEFAULT_LANGUAGE, **params: Any) -> str:
    """The text of `code` in `language` (Bahasa Indonesia for any language not in the catalogue).
    A parameter that is itself a Message is said in the same language."""
    indonesian, english = CATALOGUE[code]
    template = english if language == "en" else indonesian
    return template.format(**{name: value.text(language) if isinstance(value, Message) else value
                              for name, value in params.items()})


def language(value: str | None) -> str:
    """A language the catalogue has: `value` if it is one, else the default (Bahasa Indonesia)."""
    return value if value in LANGUAGES else DEFAULT_LANGUAGE


@dataclass(frozen=True)
class Message:
    """A text not yet said: its code and parameters. str() is the Bahasa Indonesia text."""

    code: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise KeyError(f"no message {self.code!r} in the catalogue")

    def text(self, language: str = DEFAULT_LANGUAGE) -> str:
        return say(self.code, language, **self.params)

    def __str__(self) -> str:
        return self.text()


def message(code: str, **params: Any) -> Message:
    return Message(code, params)


class Problem(str):
    """One configuration problem, one line naming file, key and what is wrong ("FILE: section.key: what";
    "FILE: what" for the file as a whole). As a str it is the Bahasa Indonesia line, so every place that
    prints, joins or stores problems says them in the fleet's language; `text("en")` is the English one."""

    file: str
    key: str
    message: Message

    def __new__(cls, file: str, key: str, what: Message) -> Problem:
        line = super().__new__(cls, _line(file, key, what.text(DEFAULT_LANGUAGE)))
        line.file, line.key, line.message = file, key, what
        return line

    @property
    def code(self) -> str:
        return self.message.code

    def text(self, language: str = DEFAULT_LANGUAGE) -> str:
        return _line(self.file, self.key, self.message.text(language))


def problem(file: str, key: str, code: str, **params: Any) -> Problem:
    return Problem(file, key, Message(code, params))


def problem_text(line: str, language: str = DEFAULT_LANGUAGE) -> str:
    """A problem line in `language`; a plain string (read back from a file, say) stays as it is."""
    return line.text(language) if isinstance(line, Problem) else line


def _line(file: str, key: str, what: str) -> str:
    return f"{file}: {key}: {what}" if key else f"{file}: {what}"
