// RMMD_ISA_CLONES: compile a hot CPU loop for AVX-512 (x86-64-v4), AVX2 + FMA + F16C (x86-64-v3) and the
// baseline ISA, picked once at load time by an ifunc resolver (GCC / Clang target_clones).
//
// Why: the extension is built without -march flags so that it loads on any x86-64 CPU, and baseline SSE2
// code needs 2-4x the instructions of AVX2 / AVX-512 for the same loop: enough to leave bf16 / fp16
// conversions and the CRPS rank compares compute-bound. Put it on a function (template or not) whose
// loop should vectorise; callees it inlines are compiled for each target too.
// Results do not depend on the clone: setup.py builds with -ffp-contract=off, so no clone fuses a * b + c
// into an FMA with a different rounding (memory-bound loops gain nothing from FMA anyway).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(RMMD_NO_ISA_CLONES)
#define RMMD_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RMMD_ISA_CLONES
#endif
