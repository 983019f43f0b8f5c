#!/usr/bin/env python3
"""Regenerate the audio and RTP fixtures in tests/fixtures/ (stdlib Python only).

    python3 tests/tools/make_fixtures.py            # rewrite the fixtures
    python3 tests/tools/make_fixtures.py --check    # regenerate into a temp dir and compare

External programs: espeak-ng (speech synthesis) and sox (22.05 kHz -> 8 kHz resampling, run with -R -D so it
is repeatable and undithered). Everything else -- trimming, level, G.711 encoding, RTP and pcap writing -- is
done here with integer arithmetic, so a re-run on the same espeak-ng/sox versions gives byte-identical files.
See tests/tools/README.md for the layout of each file.
"""

import argparse
import filecmp
import math
import os
import struct
import subprocess
import sys
import tempfile
import wave

RATE = 8000
SPEECH_TEXT = "This is the fairvox test caller, one two three."
SPEECH_SAMPLES = 3 * RATE  # exactly 3.000 s: 150 frames of 20 ms, 100 frames of 30 ms
SPEECH_LEAD_IN = 800  # 100 ms of silence before the first word
TONE_SAMPLES = 1 * RATE  # tone1k: 1.000 s
TAIL_SAMPLES = RATE // 2  # 0.5 s of tone after the DTMF digit in caller_pcmu_20ms.pcap

# RTP constants of the caller pcaps (tests read them through tests/common/mod.rs; keep both in step).
PCMU_SSRC = 0x0FA1_F0C5
PCMA_SSRC = 0x0FA1_F0C8
SEQ0 = 1000
TS0 = 16000
DTMF_PT = 101
DTMF_DIGIT = 5
DTMF_VOLUME = 10
PCAP_EPOCH = 1_700_000_000  # fixed capture time, so the pcaps are deterministic
SRC_PORT = 6000  # any: sipp replaces the ports (src = its -mp port, dst = the port of the SDP answer)
DST_PORT = 7000


# ---------------------------------------------------------------- audio


def synth_speech(tmp):
    raw = os.path.join(tmp, "espeak.wav")
    pcm8k = os.path.join(tmp, "speech8k.wav")
    subprocess.run(["espeak-ng", "-s", "180", "-w", raw, SPEECH_TEXT], check=True)
    subprocess.run(
        ["sox", "-R", "-D", raw, "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", pcm8k],
        check=True,
    )
    with wave.open(pcm8k, "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        data = w.readframes(w.getnframes())
    samples = list(struct.unpack("<%dh" % (len(data) // 2), data))
    # Trim the synthesiser's silence at both ends, then lay the speech into exactly 3.000 s.
    loud = [i for i, s in enumerate(samples) if abs(s) > 100]
    samples = samples[loud[0] : loud[-1] + 1]
    room = SPEECH_SAMPLES - SPEECH_LEAD_IN - 400
    if len(samples) > room:
        sys.exit("speech is %d samples, more than the %d that fit: shorten SPEECH_TEXT" % (len(samples), room))
    # Normalise the peak to -3 dBFS (integer arithmetic: deterministic).
    peak = max(abs(s) for s in samples)
    target = 23197  # 32767 * 10^(-3/20)
    samples = [(s * target) // peak for s in samples]
    out = [0] * SPEECH_LEAD_IN + samples
    out += [0] * (SPEECH_SAMPLES - len(out))
    return out


def tone_1k(n, amplitude=16384):
    # 1 kHz at 8 kHz is exactly 8 samples a period; round() of the same floats is the same on every machine.
    return [int(round(amplitude * math.sin(2 * math.pi * 1000 * i / RATE))) for i in range(n)]


def write_wav(path, samples):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(struct.pack("<%dh" % len(samples), *samples))


def _segment(value, ends):
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def linear_to_ulaw(sample):
    """ITU-T G.711 mu-law from 16-bit linear: the Sun/CCITT reference g711.c (14-bit, bias 33), the same
    bytes as Python's audioop.lin2ulaw."""
    pcm = sample >> 2
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + 33
    seg = _segment(pcm, [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0x0F)) ^ mask


def linear_to_alaw(sample):
    """ITU-T G.711 A-law from 16-bit linear: the Sun/CCITT reference g711.c (13-bit, even bits inverted),
    the same bytes as Python's audioop.lin2alaw."""
    pcm = sample >> 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm = -pcm - 1
    seg = _segment(pcm, [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
    return aval ^ mask


def encode(samples, fn):
    return bytes(fn(s) for s in samples)


# ---------------------------------------------------------------- RTP / pcap


def ip_checksum(header):
    total = 0
    for i in range(0, len(header), 2):
        total += (header[i] << 8) | header[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def rtp_packet(pt, seq, ts, ssrc, payload, marker=False):
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def frame(rtp, ip_id):
    # UDP checksum 0 ("none"): sipp recomputes the checksum from the packet with the ports it substitutes, and
    # a zero field keeps that sum right whether or not its sipp version clears the field first.
    udp = struct.pack("!HHHH", SRC_PORT, DST_PORT, 8 + len(rtp), 0) + rtp
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ip_id, 0x4000, 64, 17, 0,
                               bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])))
    struct.pack_into("!H", ip, 10, ip_checksum(ip))
    eth = b"\x00" * 6 + b"\x00" * 6 + b"\x08\x00"
    return eth + bytes(ip) + udp


def write_pcap(path, packets):
    """packets: list of (time_us_from_start, rtp_bytes). Ethernet link type, microsecond timestamps."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for n, (t_us, rtp) in enumerate(packets):
        data = frame(rtp, (n + 1) & 0xFFFF)
        out += struct.pack("<IIII", PCAP_EPOCH + t_us // 1_000_000, t_us % 1_000_000, len(data), len(data))
        out += data
    with open(path, "wb") as f:
        f.write(out)


def pcmu_20ms_packets(speech_u, tail_u):
    """Speech (150 x 20 ms), then RFC 4733 digit 5, then 0.5 s of 1 kHz tone (25 x 20 ms). See README."""
    pkts = []
    payloads = b""
    seq = SEQ0
    # 1. speech: packet i at i*20 ms, timestamp TS0 + i*160, marker on the first.
    for i in range(len(speech_u) // 160):
        p = speech_u[i * 160 : (i + 1) * 160]
        pkts.append((i * 20_000, rtp_packet(0, seq, TS0 + i * 160, PCMU_SSRC, p, marker=(i == 0))))
        payloads += p
        seq += 1
    # 2. DTMF 5 starting at 3.000 s (timestamp TS0 + 24000), 200 ms long (1600 units): updates every 50 ms with
    #    the duration so far (marker on the first), then the end packet sent 3 times, 20 ms apart, all with the
    #    same timestamp and final duration, new sequence numbers each.
    t0_ms = (len(speech_u) // 160) * 20
    ev_ts = TS0 + len(speech_u)
    for k in range(4):
        body = struct.pack("!BBH", DTMF_DIGIT, DTMF_VOLUME, 400 * (k + 1))
        pkts.append(((t0_ms + 50 * k) * 1000, rtp_packet(DTMF_PT, seq, ev_ts, PCMU_SSRC, body, marker=(k == 0))))
        seq += 1
    for k in range(3):
        body = struct.pack("!BBH", DTMF_DIGIT, 0x80 | DTMF_VOLUME, 1600)
        pkts.append(((t0_ms + 200 + 20 * k) * 1000, rtp_packet(DTMF_PT, seq, ev_ts, PCMU_SSRC, body)))
        seq += 1
    # 3. tail: 1 kHz tone from 3.280 s (frame index 164), timestamp TS0 + 164*160, marker on the first.
    first = (t0_ms + 280) // 20
    for j in range(len(tail_u) // 160):
        p = tail_u[j * 160 : (j + 1) * 160]
        pkts.append(((first + j) * 20_000, rtp_packet(0, seq, TS0 + (first + j) * 160, PCMU_SSRC, p, marker=(j == 0))))
        payloads += p
        seq += 1
    return pkts, payloads


def pcma_30ms_packets(speech_a):
    pkts = []
    for i in range(len(speech_a) // 240):
        p = speech_a[i * 240 : (i + 1) * 240]
        pkts.append((i * 30_000, rtp_packet(8, SEQ0 + i, TS0 + i * 240, PCMA_SSRC, p, marker=(i == 0))))
    return pkts


# ---------------------------------------------------------------- main


def generate(outdir):
    os.makedirs(outdir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        speech = synth_speech(tmp)
    tone = tone_1k(TONE_SAMPLES)
    speech_u = encode(speech, linear_to_ulaw)
    speech_a = encode(speech, linear_to_alaw)
    tone_u = encode(tone, linear_to_ulaw)

    write_wav(os.path.join(outdir, "speech.wav"), speech)
    write_wav(os.path.join(outdir, "tone1k.wav"), tone)
    with open(os.path.join(outdir, "speech.ulaw"), "wb") as f:
        f.write(speech_u)
    with open(os.path.join(outdir, "speech.alaw"), "wb") as f:
        f.write(speech_a)
    with open(os.path.join(outdir, "tone1k.ulaw"), "wb") as f:
        f.write(tone_u)

    pkts, payloads = pcmu_20ms_packets(speech_u, tone_u[:TAIL_SAMPLES])
    write_pcap(os.path.join(outdir, "caller_pcmu_20ms.pcap"), pkts)
    with open(os.path.join(outdir, "caller_pcmu_20ms.payload"), "wb") as f:
        f.write(payloads)
    write_pcap(os.path.join(outdir, "caller_pcma_30ms.pcap"), pcma_30ms_packets(speech_a))


FILES = [
    "speech.wav",
    "speech.ulaw",
    "speech.alaw",
    "tone1k.wav",
    "tone1k.ulaw",
    "caller_pcmu_20ms.pcap",
    "caller_pcmu_20ms.payload",
    "caller_pcma_30ms.pcap",
]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.normpath(os.path.join(here, "..", "fixtures"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out, help="output directory (default: tests/fixtures)")
    ap.add_argument("--check", action="store_true", help="regenerate into a temp dir and compare with --out")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(tmp)
            bad = [f for f in FILES if not filecmp.cmp(os.path.join(tmp, f), os.path.join(args.out, f), shallow=False)]
        if bad:
            sys.exit("differ from a fresh generation: " + ", ".join(bad))
        print("fixtures are up to date: " + ", ".join(FILES))
        return
    generate(args.out)
    for f in FILES:
        print("wrote %s (%d bytes)" % (os.path.join(args.out, f), os.path.getsize(os.path.join(args.out, f))))


if __name__ == "__main__":
    main()
