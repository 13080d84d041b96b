/* dlfcn.h for wasm32-wasi: a sandboxed guest loads no code at run time, so every dlopen fails. */
#ifndef WASILLAMA_COMPAT_DLFCN_H
#define WASILLAMA_COMPAT_DLFCN_H
#define RTLD_LAZY 1
#define RTLD_NOW 2
#define RTLD_LOCAL 0
#define RTLD_GLOBAL 256
static inline void * dlopen(const char * path, int mode) { (void) path; (void) mode; return 0; }
static inline void * dlsym(void * handle, const char * name) { (void) handle; (void) name; return 0; }
static inline int dlclose(void * handle) { (void) handle; return 0; }
static inline char * dlerror(void) { return (char *) "dynamic loading is not available in the wasm sandbox"; }
#endif
