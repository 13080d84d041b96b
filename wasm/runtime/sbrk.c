// sbrk for the guest: wasi-libc's own (libc-bottom-half/sources/sbrk.c, which dlmalloc calls
// for more heap), plus a record of the growth the host refused. A memory cap is a wasmtime store
// limit: memory.grow fails, malloc returns NULL, and llama.cpp reports an error or asserts. The
// host reads the record to tell running out of the cap from any other failure, with the numbers
// (how much more the guest asked for), without calling into a guest that may have trapped.
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#define PAGESIZE 65536

// bytes of the last growth refused; the host reads it at wl_heap_watch()'s address and resets it
static volatile uint32_t refused;

__attribute__((export_name("wl_heap_watch"), used)) uint32_t wl_heap_watch(void) {
    return (uint32_t) (uintptr_t) &refused;
}

void * sbrk(intptr_t increment) {
    if (increment == 0) return (void *) (__builtin_wasm_memory_size(0) * PAGESIZE);
    if (increment < 0 || increment % PAGESIZE != 0) abort();  // as wasi-libc: no shrinking, whole pages
    uintptr_t old = __builtin_wasm_memory_grow(0, (uintptr_t) increment / PAGESIZE);
    if (old == SIZE_MAX) {
        refused = (uint32_t) increment;
        errno = ENOMEM;
        return (void *) -1;
    }
    return (void *) (old * PAGESIZE);
}
