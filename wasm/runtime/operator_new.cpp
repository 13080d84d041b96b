// operator new for the guest. Debian's wasm libc++abi is built without exceptions, so its
// operator new aborts (a trap) when malloc fails. llama.cpp expects std::bad_alloc, which the
// shim turns into WL_E_NOMEM: an out-of-memory guest then reports an error instead of dying.
#include <cstdlib>
#include <new>

void * operator new(std::size_t n) {
    if (n == 0) n = 1;
    if (void * p = std::malloc(n)) return p;
    throw std::bad_alloc();
}
void * operator new[](std::size_t n) { return ::operator new(n); }
void * operator new(std::size_t n, const std::nothrow_t &) noexcept { return std::malloc(n ? n : 1); }
void * operator new[](std::size_t n, const std::nothrow_t &) noexcept { return std::malloc(n ? n : 1); }
void operator delete(void * p) noexcept { std::free(p); }
void operator delete[](void * p) noexcept { std::free(p); }
void operator delete(void * p, std::size_t) noexcept { std::free(p); }
void operator delete[](void * p, std::size_t) noexcept { std::free(p); }
