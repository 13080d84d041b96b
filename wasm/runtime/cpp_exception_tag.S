# The tag that C++ `throw` and `catch` use with wasm exception handling. The compiler only
# references it; a toolchain's runtime normally defines it (emscripten, wasi-sdk), Debian's does not.
.globl __cpp_exception
.tagtype __cpp_exception i32
__cpp_exception:
