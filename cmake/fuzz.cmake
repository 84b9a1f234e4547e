# libFuzzer targets; written by the fuzzing work (see scripts/fuzz).
