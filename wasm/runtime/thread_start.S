# wasi_thread_start(tid, arg): where the host starts a guest thread (wasi-threads' entry point),
# on a fresh instance that shares the memory. Before any C code runs, the thread needs its own
# stack (the instance's __stack_pointer starts at the main thread's) and its own TLS block
# (errno, ...): both were allocated by pthread_create (threads.c), their addresses are the first
# two words of `arg`.
	.text
	.globaltype	__stack_pointer, i32
	.functype	__wasm_init_tls (i32) -> ()
	.functype	wl_thread_main (i32, i32) -> ()

	.export_name	wasi_thread_start, wasi_thread_start
	.globl	wasi_thread_start
	.type	wasi_thread_start,@function
wasi_thread_start:
	.functype	wasi_thread_start (i32, i32) -> ()
	local.get	1
	i32.load	0
	global.set	__stack_pointer
	local.get	1
	i32.load	4
	call	__wasm_init_tls
	local.get	0
	local.get	1
	call	wl_thread_main
	end_function
