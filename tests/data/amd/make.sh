#!/bin/sh
# Regenerates the answering-machine-detection set (tests/data/amd/*.wav and
# clips.tsv) with espeak-ng and SoX: what the callee's side of an outbound
# call sounds like in its first seconds. 8 kHz mono 16-bit PCM, dither off
# (-D), so the same tool versions give the same bytes.
#
#   sh tests/data/amd/make.sh
#
# clips.tsv: file, label (human|machine), beep start in ms from the clip's
# start (- when there is none), beep frequency in Hz (- when none).
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -f ./*.wav
printf 'file\tlabel\tbeep_ms\tbeep_hz\n' > clips.tsv

# speech <out> <voice> <speed> <text>: 8 kHz mono, espeak's own leading and
# trailing silence trimmed, peak at -3 dBFS.
speech() {
    espeak-ng -v "$2" -s "$3" -w "$tmp/raw.wav" "$4"
    sox -D "$tmp/raw.wav" -r 8000 -c 1 -b 16 "$1" \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse gain -n -3
}
silence() { sox -D -n -r 8000 -c 1 -b 16 "$1" trim 0 "$2"; }
tone() { sox -D -n -r 8000 -c 1 -b 16 "$1" synth "$3" sine "$2" gain -6; }
ms() { soxi -D "$1" | awk '{ printf "%d", $1 * 1000 + 0.5 }'; }

# clip <name> <label> <lead s> <voice> <speed> <text> <tail s> [beep_hz beep_s gap_s] [noise dB]
# The clip: lead silence, the speech, then either a gap + a beep + the
# tail, or the tail alone; with a noise level, pink noise under all of it.
clip() {
    name=$1 label=$2 lead=$3 voice=$4 speed=$5 text=$6 tail=$7
    hz=${8:--} beep_s=${9:-0} gap=${10:-0} noise=${11:-}
    silence "$tmp/lead.wav" "$lead"
    speech "$tmp/speech.wav" "$voice" "$speed" "$text"
    silence "$tmp/tail.wav" "$tail"
    if [ "$hz" != - ]; then
        silence "$tmp/gap.wav" "$gap"
        tone "$tmp/beep.wav" "$hz" "$beep_s"
        sox -D "$tmp/lead.wav" "$tmp/speech.wav" "$tmp/gap.wav" "$tmp/beep.wav" "$tmp/tail.wav" "$tmp/clean.wav"
        beep_ms=$(( $(ms "$tmp/lead.wav") + $(ms "$tmp/speech.wav") + $(ms "$tmp/gap.wav") ))
    else
        sox -D "$tmp/lead.wav" "$tmp/speech.wav" "$tmp/tail.wav" "$tmp/clean.wav"
        beep_ms=-
    fi
    if [ -n "$noise" ]; then
        len=$(soxi -D "$tmp/clean.wav")
        sox -R -D -n -r 8000 -c 1 -b 16 "$tmp/noise.wav" synth "$len" pinknoise gain "$noise"
        sox -R -D -m "$tmp/clean.wav" "$tmp/noise.wav" -b 16 "$name.wav"
    else
        cp "$tmp/clean.wav" "$name.wav"
    fi
    printf '%s.wav\t%s\t%s\t%s\n' "$name" "$label" "$beep_ms" "$hz" >> clips.tsv
}

G1="Hi, you've reached Sarah. I can't take your call right now. Please leave a message after the tone."
G2="Hello. You have reached the voicemail of John Miller. Please leave your name and number and I will call you back."
G3="The person you are calling is not available. Please record your message after the beep."
G4="Thanks for calling. Leave a message."
G5="Hey, it's Dave. Leave a message."
G6="You have reached five five five, one two three four. No one is available to take your call. At the tone, please record your message."
G7="Hi, this is Anna from Northwind. I'm away from my desk, leave me a message and I'll get back to you."

# Voicemail greetings with a beep: voices, speeds, beep tones and lengths.
clip vm_sarah_beep1000       machine 0.6 en-us          175 "$G1" 1.5 1000 0.50 0.30
clip vm_sarah_f2_beep440     machine 0.4 en-us+f2       160 "$G1" 1.5 440  0.40 0.50
clip vm_john_beep850         machine 0.8 en-gb          170 "$G2" 1.5 850  0.25 0.40
clip vm_john_m3_beep1400     machine 0.5 en-gb+m3       190 "$G2" 1.5 1400 0.80 0.20
clip vm_unavail_beep1200     machine 0.3 en-us+f4       165 "$G3" 1.5 1200 0.15 0.60
clip vm_unavail_scot_beep600 machine 0.7 en-gb-scotland 175 "$G3" 1.5 600 1.00 0.30
clip vm_short_beep1000       machine 0.5 en-us          175 "$G4" 1.5 1000 0.50 0.40
clip vm_short_f3_beep700     machine 0.9 en-029+f3      160 "$G4" 1.5 700  0.30 0.25
clip vm_dave_beep950         machine 0.4 en-us-nyc      185 "$G5" 1.5 950  0.35 0.50
clip vm_dave_f2_beep1100     machine 0.6 en-us+f2       200 "$G5" 1.5 1100 0.20 0.30
clip vm_digits_beep1000      machine 0.5 en-us          180 "$G6" 1.5 1000 0.60 0.35
clip vm_digits_m3_beep500    machine 0.6 en-gb+m3       170 "$G6" 1.5 500  0.45 0.45
clip vm_anna_f4_beep1300     machine 0.5 en-us+f4       175 "$G7" 1.5 1300 0.50 0.30
clip vm_anna_beep800         machine 0.8 en-gb-x-rp     165 "$G7" 1.5 800  0.70 0.55
clip vm_slow_beep1000        machine 0.5 en-us          130 "$G4" 1.5 1000 0.40 0.40
clip vm_fast_beep1000        machine 0.5 en-us          230 "$G1" 1.5 1000 0.40 0.40
# ... with background noise (hiss of an old tape, a line).
clip vm_sarah_noise_beep1000 machine 0.6 en-us          175 "$G1" 1.5 1000 0.50 0.30 -38
clip vm_john_noise_beep440   machine 0.5 en-gb          175 "$G2" 1.5 440  0.50 0.40 -34
clip vm_short_noise_beep900  machine 0.5 en-us+f2       175 "$G4" 1.5 900  0.40 0.40 -36
clip vm_dave_noise_beep1200  machine 0.4 en-us-nyc      185 "$G5" 1.5 1200 0.30 0.30 -32
# Greetings that end without a beep (some machines never beep).
clip vm_sarah_nobeep         machine 0.5 en-us          175 "$G1" 2.0
clip vm_john_f4_nobeep       machine 0.6 en-us+f4       170 "$G2" 2.0
clip vm_unavail_nobeep       machine 0.4 en-gb+m3       175 "$G3" 2.0
clip vm_anna_noise_nobeep    machine 0.7 en-us+f2       175 "$G7" 2.0 - 0 0 -36
# A machine that answers late: long silence before the greeting.
clip vm_late_beep1000        machine 3.2 en-us          175 "$G4" 1.5 1000 0.50 0.40

# Human answers: a short word or phrase, then silence while they wait.
clip hu_hello                human 0.5 en-us          175 "Hello?"                        2.5
clip hu_hello_f2             human 0.3 en-us+f2       175 "Hello?"                        2.5
clip hu_hello_m3             human 0.8 en-gb+m3       160 "Hello?"                        2.5
clip hu_hello_scot           human 0.4 en-gb-scotland 180 "Hello?"                        2.5
clip hu_yes                  human 0.5 en-us          175 "Yes?"                          2.5
clip hu_yes_f4               human 0.6 en-us+f4       175 "Yes?"                          2.5
clip hu_yeah_hello           human 0.4 en-us-nyc      185 "Yeah, hello?"                  2.5
clip hu_mark                 human 0.5 en-us          175 "Hello, this is Mark speaking." 2.5
clip hu_mark_f2              human 0.4 en-us+f2       190 "Hello, this is Mark speaking." 2.5
clip hu_mark_rp              human 0.6 en-gb-x-rp     180 "Hello, this is Mark speaking." 2.5
clip hu_speaking             human 0.5 en-gb          175 "Speaking."                     2.5
clip hu_hi                   human 0.7 en-029+f3      175 "Hi!"                           2.5
clip hu_who                  human 0.5 en-us+f2       180 "Hello, who is this?"           2.5
clip hu_pause_hello          human 1.6 en-us          175 "Hello?"                        2.5
clip hu_pause_hello_f4       human 2.0 en-us+f4       170 "Hello?"                        2.5
clip hu_good_morning         human 0.4 en-gb+m3       180 "Good morning."                 2.5
# ... over a noisy line.
clip hu_hello_noise          human 0.5 en-us          175 "Hello?"                        2.5 - 0 0 -36
clip hu_yes_noise            human 0.5 en-gb          175 "Yes?"                          2.5 - 0 0 -32
clip hu_mark_noise           human 0.5 en-us+f2       185 "Hello, this is Mark speaking." 2.5 - 0 0 -38
clip hu_pause_hello_noise    human 1.5 en-gb-scotland 175 "Hello?"                        2.5 - 0 0 -34
