/*
 * wasillama shim: a narrow, handle-based C ABI over llama.h.
 *
 * The same source is compiled into wasm/llama.wasm (wasm32-wasi) and natively into
 * libwasillama_native (native_fallback/). Rules that keep both builds interchangeable:
 *   - names are wl_<object>_<verb> (library, model, vocab, context, memory, sampler);
 *   - objects are opaque int32 handles (> 0); 0 is never a valid handle;
 *   - every call returns an int32: >= 0 on success (a handle, a count or a length), a negative
 *     WL_E_* status on failure; its message is then wl_error_last()'s, per thread (errno-style),
 *     and there is no other error channel;
 *   - buffers travel as (pointer, capacity); a call that produces a variable-length result
 *     returns the full length even when it exceeds the capacity, so the host can grow and retry;
 *   - structs hold only fixed-width scalars (no pointers, no bool, no enums), so their layout is
 *     identical on wasm32 and on 64-bit hosts, and each carries its own size (see "Sized
 *     structs" below); src/wasillama/shim/abi.py mirrors them (tests/test_abi.py);
 *   - no C++ type, exception or allocation crosses the boundary.
 */
#ifndef WASILLAMA_SHIM_H
#define WASILLAMA_SHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version: wl_abi_version() returns (WL_ABI_VERSION << 16) | WL_ABI_MINOR. The major number
 * changes with any incompatible change; the minor one with additions (new functions, new fields
 * at the end of a struct, new values). A host built for major M, minor m uses a module with
 * major M and minor >= m, and refuses any other, naming both versions. (2.0 was never released:
 * its structs had reserved space instead of a size; 2.1 is the first layout below.) */
#define WL_ABI_VERSION 2
#define WL_ABI_MINOR   4

/* Sized structs. Every struct begins with `size` (int32_t, or int64_t in a struct of int64_t
 * fields, so there is no padding): the struct's size as its writer knows it. Structs only grow at
 * their end, and a field added later means "as before" when it is zero, so:
 *   - a struct the host passes in (wl_*_params): the module reads the fields both know; fields
 *     the host's (older) layout lacks are zero; a size below the 2.1 layout's is WL_E_ARG; the
 *     bytes of a newer host's fields this module does not know must be zero, or the call fails
 *     with WL_E_UNSUPPORTED naming the byte (a setting this module cannot honour is refused,
 *     never ignored). NULL model params mean llama.cpp's defaults.
 *   - a struct the module fills (wl_model_info): the host sets `size` to what it has room for;
 *     the module writes the fields that fit, sets `size` to the bytes it wrote, leaves the rest
 *     alone, and returns its own sizeof, so the host knows which of its fields were filled. */

/* Status codes (negative returns); the message is then wl_error_last()'s. Mirrored by
 * src/wasillama/shim/abi.py (tests/test_abi.py holds the two together). */
#define WL_E_HANDLE      (-1)  /* unknown or already freed handle */
#define WL_E_ARG         (-2)  /* invalid argument */
#define WL_E_LOAD        (-3)  /* the model file could not be loaded (corrupt, unsupported, ...) */
#define WL_E_NOMEM       (-4)  /* an allocation failed */
#define WL_E_CTX_FULL    (-5)  /* no room left in the context (KV cache) */
#define WL_E_DECODE      (-6)  /* llama_decode failed for another reason */
#define WL_E_ABORTED     (-7)  /* the host raised the context's abort flag */
#define WL_E_TEMPLATE    (-8)  /* the chat template is missing or unsupported */
#define WL_E_INTERNAL    (-9)  /* an unexpected exception inside llama.cpp */
#define WL_E_UNSUPPORTED (-10) /* this build or model cannot do that (e.g. a path load inside wasm) */

/* Why a sequence stopped in wl_context_generate (its stop[i]). */
#define WL_STOP_LENGTH   0     /* produced max_tokens */
#define WL_STOP_EOG      1     /* the model produced an end-of-generation token (not returned) */
#define WL_STOP_CTX_FULL 2     /* no room for another token in the sequence */

/* The most top log-probabilities wl_context_generate reports per token. */
#define WL_TOP_LOGPROBS_MAX 20

/* Flags for wl_vocab_tokenize / wl_vocab_detokenize / wl_vocab_piece. */
#define WL_TOK_ADD_SPECIAL   1 /* tokenize: add BOS/EOS as the model asks; detokenize: keep them */
#define WL_TOK_PARSE_SPECIAL 2 /* tokenize: parse control tokens; detokenize/piece: render them */

/* Sampler types for wl_sampler_chain_add: (floats; ints; text) each takes. */
#define WL_SAMPLER_GREEDY      1  /* (;;) */
#define WL_SAMPLER_DIST        2  /* (; seed;) draws from the distribution */
#define WL_SAMPLER_TEMP        3  /* (t;;) */
#define WL_SAMPLER_TEMP_EXT    4  /* (t, delta, exponent;;) dynamic temperature */
#define WL_SAMPLER_TOP_K       5  /* (; k;) */
#define WL_SAMPLER_TOP_P       6  /* (p; min_keep;) */
#define WL_SAMPLER_MIN_P       7  /* (p; min_keep;) */
#define WL_SAMPLER_TYPICAL     8  /* (p; min_keep;) */
#define WL_SAMPLER_PENALTIES   9  /* (repeat, frequency, presence; last_n;) */
#define WL_SAMPLER_DRY        10  /* (multiplier, base; allowed_length, last_n; breakers, NUL-separated) */
#define WL_SAMPLER_XTC        11  /* (p, t; min_keep, seed;) */
#define WL_SAMPLER_MIROSTAT   12  /* (tau, eta; seed, m;) */
#define WL_SAMPLER_MIROSTAT_V2 13 /* (tau, eta; seed;) */
#define WL_SAMPLER_LOGIT_BIAS 14  /* (bias per token; token ids;) */
#define WL_SAMPLER_GRAMMAR    15  /* (; prefill; GBNF grammar, NUL, root rule): prefill (since 2.3) are
                                     tokens the grammar accepts before sampling (a generation
                                     prompt a chat template's grammar covers) */
#define WL_SAMPLER_GRAMMAR_LAZY 16 /* (; trigger tokens; GBNF grammar, NUL, root rule, then NUL and a
                                     trigger pattern for each): unconstrained until a trigger token
                                     is sampled or the text matches a pattern (a regular
                                     expression), then the grammar from there on. Since 2.3. */

typedef struct wl_model_params {
    int32_t size;           /* sizeof(wl_model_params) as the host knows it */
    int32_t n_gpu_layers;   /* native only; -1 = all */
    int32_t main_gpu;       /* native only */
    int32_t split_mode;     /* native only: llama_split_mode */
    int32_t use_mmap;       /* native path loads only */
    int32_t use_mlock;      /* native path loads only */
    int32_t vocab_only;     /* load the vocabulary alone */
    int32_t check_tensors;  /* validate tensor data while loading */
} wl_model_params;

typedef struct wl_model_info {
    int64_t size;           /* in: the host's room; out: the bytes written */
    int64_t n_params;
    int64_t size_bytes;
    int64_t n_ctx_train;
    int64_t n_embd;
    int64_t n_layer;
    int64_t n_head;
    int64_t n_head_kv;
    int64_t n_vocab;
    int64_t vocab_type;
    int64_t token_bos;
    int64_t token_eos;
    int64_t token_eot;
    int64_t token_nl;
    int64_t add_bos;
    int64_t add_eos;
    int64_t has_encoder;
    int64_t has_decoder;
    int64_t n_swa;
} wl_model_info;

typedef struct wl_context_params {
    int32_t size;           /* sizeof(wl_context_params) as the host knows it */
    int32_t n_ctx;          /* 0 = from the model */
    int32_t n_batch;
    int32_t n_ubatch;
    int32_t n_seq_max;
    int32_t n_threads;
    int32_t n_threads_batch;
    int32_t embeddings;     /* 0/1 */
    int32_t flash_attn;     /* llama_flash_attn_type: -1 auto, 0 off, 1 on */
    int32_t type_k;         /* ggml_type of the K cache, -1 = default */
    int32_t type_v;         /* ggml_type of the V cache, -1 = default */
    int32_t offload_kqv;    /* native only, 0/1 */
    int32_t pooling_type;   /* llama_pooling_type, -1 = from the model */
    int32_t kv_unified;     /* 0: each sequence its own KV stream of n_ctx / n_seq_max cells (the
                               default: sequences compute exactly as alone); 1: one buffer for
                               all, where a token may belong to several sequences and copies
                               between sequences may be partial */
    int32_t numerics;       /* since 2.4. WL_NUMERICS_FAST (0): the build's fastest kernels;
                               WL_NUMERICS_X86 (1): round as llama.cpp's x86 CPU builds do (wasm:
                               Q8_0, Q4_0, Q4_1 and Q4_K through kernels that reproduce x86's AVX2
                               ones, slower on prompts; natively an x86 build already does, any
                               other is WL_E_UNSUPPORTED) */
} wl_context_params;

/* wl_context_params.numerics */
#define WL_NUMERICS_FAST 0
#define WL_NUMERICS_X86  1

/* ---- library ----------------------------------------------------------------------------
 * Ownership: every object is an int32 handle (> 0, never reused while live) freed by its
 * wl_*_free. A context or sampler chain holds a reference to its model: freeing the model
 * handle with contexts alive is allowed, and the weights go with the last of them. Buffers the
 * host passes are read during the call only; returned pointers (wl_context_abort_flag) stay
 * valid until their object is freed.
 * Threads: natively a model may be used from several threads at once; a context and its
 * sampler chains by one thread at a time. Inside wasm the host serialises every call. */
int32_t wl_abi_version(void);
int32_t wl_init(void);
/* The message of the last call that failed on this thread (errno-style); returns its length. */
int32_t wl_error_last(char * buf, int32_t cap);
/* Copies the build description ("ggml VERSION, llama.cpp COMMIT | system info") into buf. */
int32_t wl_system_info(char * buf, int32_t cap);
/* One line per compute device ggml sees: "name\tdescription\ttype\tfree_bytes\ttotal_bytes\n". */
int32_t wl_devices(char * buf, int32_t cap);

/* ---- models ----------------------------------------------------------------------------- */
/* Load a GGUF whose bytes the host serves through wl_host_read(source, ...). */
int32_t wl_model_load_host(int32_t source, int64_t size, const wl_model_params * params,
                           const float * tensor_split, int32_t n_split);
/* Load a GGUF from a path (native builds; WL_E_UNSUPPORTED inside wasm). */
int32_t wl_model_load_path(const char * path, const wl_model_params * params,
                           const float * tensor_split, int32_t n_split);
int32_t wl_model_free(int32_t model);
/* Fills *out as a sized struct (the host sets out->size first); returns sizeof(wl_model_info). */
int32_t wl_model_info_get(int32_t model, wl_model_info * out);
/* Metadata value for a NUL-terminated key; WL_E_ARG when the key is absent. */
int32_t wl_model_meta(int32_t model, const char * key, char * buf, int32_t cap);
int32_t wl_model_meta_count(int32_t model);
int32_t wl_model_meta_key(int32_t model, int32_t i, char * buf, int32_t cap);
int32_t wl_model_meta_value(int32_t model, int32_t i, char * buf, int32_t cap);
int32_t wl_model_desc(int32_t model, char * buf, int32_t cap);
/* The model's chat template (name NULL or "" = default); WL_E_TEMPLATE when it has none. */
int32_t wl_model_chat_template(int32_t model, const char * name, char * buf, int32_t cap);
/* Render messages with one of llama.cpp's built-in templates (tmpl NULL = the model's default),
 * without Jinja; superseded by wl_chat_apply.
 * `packed` holds n_msg (role, content) pairs as consecutive NUL-terminated strings. */
int32_t wl_model_chat_apply(int32_t model, const char * tmpl, const char * packed, int32_t packed_len,
                            int32_t n_msg, int32_t add_assistant, char * buf, int32_t cap);

/* ---- LoRA adapters (of a model; since 2.2) ------------------------------------------------------
 * Load an adapter GGUF whose bytes the host serves through wl_host_read(source, ...) (both
 * builds: adapters are small, and the sandbox opens no file). It belongs to `model` (same
 * architecture and tensor shapes, else WL_E_LOAD) and keeps it alive; contexts that use it keep
 * the adapter alive after wl_lora_free. */
int32_t wl_lora_load_host(int32_t model, int32_t source, int64_t size);
int32_t wl_lora_free(int32_t lora);
/* Makes exactly these n adapters (with their scales) apply to ctx; n = 0 removes all. What the
 * KV cache holds was computed with the previous set: the host clears what it should not reuse.
 * Returns n. */
int32_t wl_context_set_loras(int32_t ctx, const int32_t * loras, const float * scales, int32_t n);

/* ---- structured output ----------------------------------------------------------------------
 * A JSON schema (UTF-8 JSON text) as a GBNF grammar whose root rule matches exactly the JSON
 * documents the schema accepts (llama.cpp's converter, common/json-schema-to-grammar.cpp);
 * returns the grammar's length. Invalid JSON, an unsupported schema, or nesting deeper than
 * WL_JSON_SCHEMA_MAX_DEPTH is WL_E_ARG with the converter's message. Since 2.2. */
#define WL_JSON_SCHEMA_MAX_DEPTH 64
int32_t wl_json_schema_to_grammar(const char * schema, int32_t len, char * buf, int32_t cap);

/* ---- chat (since 2.3) ------------------------------------------------------------------------
 * llama.cpp's chat code (common/chat.cpp, its Jinja engine and tool-call formats), as llama-server
 * uses it. wl_chat_apply renders a request with the model's template (parsed once per model) or
 * an override, and returns as JSON what generating and reading the reply need. Request (UTF-8
 * JSON object): "messages" (OpenAI chat messages: role, content, tool_calls, tool_call_id, name,
 * reasoning_content), and optionally "tools" (OpenAI function tools), "tool_choice" ("auto",
 * "required", "none"), "parallel_tool_calls" (false), "add_generation_prompt" (true),
 * "enable_thinking" (true), "template" (Jinja source to use instead of the model's),
 * "template_kwargs" (an object of extra template variables), "now" (Unix seconds: the date
 * templates print; default the guest's clock). Result: {"prompt", "stops" (strings that end the
 * reply), "grammar" ("" = none), "grammar_lazy", "trigger_patterns", "trigger_tokens",
 * "grammar_prefill" (for WL_SAMPLER_GRAMMAR_LAZY / WL_SAMPLER_GRAMMAR), "preserved_tokens" (ids
 * of control tokens the reply's text must render: WL_TOK_PARSE_SPECIAL), "format" (the tool-call
 * format's name), "parser" (an opaque string for wl_chat_parse)}. A malformed request is
 * WL_E_ARG; no template, one that does not parse or fails to render, or one whose blocks or
 * brackets (inside tags) nest deeper than WL_CHAT_TEMPLATE_MAX_DEPTH, WL_E_TEMPLATE. */
#define WL_CHAT_TEMPLATE_MAX_DEPTH 64
int32_t wl_chat_apply(int32_t model, const char * request, int32_t len, char * buf, int32_t cap);
/* Reads generated text back into an assistant message, OpenAI JSON: {"role", "content",
 * "reasoning_content"?, "tool_calls"?: [{"type": "function", "id"?, "function": {"name",
 * "arguments" (JSON text)}}]}. parser: the "parser" of wl_chat_apply's result; partial = 1 while
 * the text may still grow (streaming). Complete text that does not match the format is
 * WL_E_TEMPLATE. */
int32_t wl_chat_parse(const char * parser, int32_t parser_len, const char * text, int32_t len, int32_t partial,
                      char * buf, int32_t cap);

/* ---- vocabulary (of a model; thread-safe) --------------------------------------------------- */
int32_t wl_vocab_tokenize(int32_t model, const char * text, int32_t len, int32_t flags,
                          int32_t * out, int32_t cap);
int32_t wl_vocab_detokenize(int32_t model, const int32_t * tokens, int32_t n, int32_t flags,
                            char * buf, int32_t cap);
int32_t wl_vocab_piece(int32_t model, int32_t token, int32_t flags, char * buf, int32_t cap);
/* 1 if the token ends generation, 0 if not. */
int32_t wl_vocab_is_eog(int32_t model, int32_t token);
/* Every token that ends generation (EOS, EOT, ...), ascending; returns how many there are. */
int32_t wl_vocab_eog_tokens(int32_t model, int32_t * out, int32_t cap);

/* ---- contexts (one thread at a time) ---------------------------------------------------- */
int32_t wl_context_new(int32_t model, const wl_context_params * params);
int32_t wl_context_free(int32_t ctx);
/* Writes up to cap of: n_ctx, n_batch, n_ubatch, n_seq_max, n_ctx_seq (the cells one sequence
 * may use), embeddings (0/1), pooling_type (llama_pooling_type in effect; since 2.2) into out;
 * returns how many there are (more may follow in later versions). */
int32_t wl_context_info(int32_t ctx, int32_t * out, int32_t cap);
/* Address of an int32 the host may set (from any thread) to abort the running decode; every
 * decode clears it when it returns, so a late abort does not stop the next one. */
int32_t wl_context_abort_flag(int32_t ctx, int32_t ** out_ptr);

/* Decodes one batch of n <= n_batch tokens in one llama_decode (the caller splits longer
 * input, so it knows what each call did). Token i goes to n_seq_id[i] sequences listed in turn
 * in seq_ids (n_seq_id NULL: one each, seq_ids[i]; seq_ids NULL too: sequence 0; several need
 * kv_unified), at pos[i]
 * (pos NULL: after the last position of its first sequence), with an output when outputs[i]
 * is 1 (outputs NULL: the last token only). "Full" is judged per sequence (llama_n_ctx_seq
 * cells each): WL_E_CTX_FULL names the sequence. Returns the number of outputs. On failure
 * (abort, no KV slot) the cache may hold ubatches llama.cpp finished: the host drops what it
 * cannot account for (wl_memory_seq_rm). */
int32_t wl_context_decode(int32_t ctx, const int32_t * tokens, int32_t n, const int32_t * pos,
                          const int32_t * n_seq_id, const int32_t * seq_ids, const int8_t * outputs);
/* Copies the logits of an output of the last decode into out; returns n_vocab. idx >= 0: the
 * batch position of a token that had an output; idx < 0: counts back from the last output. */
int32_t wl_context_logits(int32_t ctx, int32_t idx, float * out, int32_t cap);

/* Embeddings of the last decode of a context made with embeddings = 1 (WL_E_ARG otherwise).
 * _seq: the pooled vector of a sequence that had tokens in it (mean / cls / last pooling: the
 * model's n_embd_out floats; rank pooling: its n_cls_out scores); WL_E_ARG with pooling none.
 * _token: the embedding of a token with an output (idx as for wl_context_logits).
 * Both copy up to cap floats into out and return how many there are. Since 2.2. */
int32_t wl_context_embeddings_seq(int32_t ctx, int32_t seq, float * out, int32_t cap);
int32_t wl_context_embeddings_token(int32_t ctx, int32_t idx, float * out, int32_t cap);

/* Generates for n sequences at once, each with its own sampler chain. For i < n: seqs[i]
 * (distinct, < n_seq_max), samplers[i], pending[i] = a token to decode first, at the next
 * position of seqs[i] (the last prompt token, or the last token a previous call returned), and
 * 0 <= max_tokens[i] <= stride. Each step decodes the pending token of every active sequence in
 * ONE llama_decode and samples each from its own output: an end-of-generation token stops it
 * (WL_STOP_EOG; not written), max_tokens[i] tokens stop it (WL_STOP_LENGTH), a sequence whose
 * next position would reach llama_n_ctx_seq stops (WL_STOP_CTX_FULL) while the others go on.
 * Writes sequence i's tokens to out[i * stride ...], their count to n_out[i], its reason to
 * stop[i]; the last token written is sampled but not decoded (pass it as pending to go on).
 * With logprobs (NULL = none), each written token's log-probability under the model (log-softmax
 * of the raw logits, before any sampler) goes to logprobs[i * stride + j], and when n_top > 0
 * (<= WL_TOP_LOGPROBS_MAX) the n_top most likely tokens of that step and theirs, most likely
 * first, to top_tokens / top_logprobs[(i * stride + j) * n_top ...].
 * Returns the number of decode steps. A failed decode (abort, no KV slot) returns its status;
 * out, n_out, stop and the log-probabilities then hold what was generated before it. */
int32_t wl_context_generate(int32_t ctx, int32_t n, const int32_t * seqs, const int32_t * samplers,
                            const int32_t * pending, const int32_t * max_tokens, int32_t stride,
                            int32_t * out, int32_t * n_out, int32_t * stop, float * logprobs,
                            int32_t n_top, int32_t * top_tokens, float * top_logprobs);

/* ---- KV cache, per sequence (seq -1 = every sequence; p1 < 0 = to the end) ---------------- */
int32_t wl_memory_clear(int32_t ctx);
/* WL_E_UNSUPPORTED when the model's memory cannot drop part of a sequence (recurrent models). */
int32_t wl_memory_seq_rm(int32_t ctx, int32_t seq, int32_t p0, int32_t p1);
/* Makes sequence dst hold what sequence src holds (a shared prefix evaluated once serves several
 * sequences; trim dst with wl_memory_seq_rm). Each sequence has its own KV stream, which llama.cpp
 * copies whole only unless the context has kv_unified: p0 must then be 0 and p1 -1 (WL_E_ARG). */
int32_t wl_memory_seq_cp(int32_t ctx, int32_t src, int32_t dst, int32_t p0, int32_t p1);
/* Drops every sequence but seq. */
int32_t wl_memory_seq_keep(int32_t ctx, int32_t seq);
/* Shifts the positions [p0, p1) of seq by delta (WL_E_UNSUPPORTED if the memory cannot). */
int32_t wl_memory_seq_add(int32_t ctx, int32_t seq, int32_t p0, int32_t p1, int32_t delta);
/* Writes the smallest and the largest position seq holds to out[0], out[1] (-1, -1 when it is
 * empty); positions travel in out, so no position can be mistaken for a status. */
int32_t wl_memory_seq_pos_range(int32_t ctx, int32_t seq, int32_t * out);

/* ---- state (what a sequence's KV cache holds, as bytes) ------------------------------------
 * _get copies sequence seq's state (llama_state_seq_get_data) into buf when cap is large enough
 * and returns its size either way. _set makes seq hold a state _get produced; one from another
 * model or context shape, or damaged, is WL_E_ARG (and seq is then empty). Since 2.2. */
int32_t wl_state_seq_get(int32_t ctx, int32_t seq, uint8_t * buf, int32_t cap);
int32_t wl_state_seq_set(int32_t ctx, int32_t seq, const uint8_t * buf, int32_t len);

/* ---- sampler chains (each holds a reference to its model) ---------------------------------- */
/* An empty chain; add samplers in the order they should run. Sampling needs the last one to pick
 * a token (greedy, dist, mirostat, mirostat_v2) and a context of the same model (WL_E_ARG).
 * A grammar (at most one, wherever it is added) constrains the chain lazily, as llama.cpp's
 * common sampler does: the chain samples, and only a token the grammar rejects makes it sample
 * again from the tokens the grammar allows (greedy: the same token as filtering first). */
int32_t wl_sampler_chain_new(int32_t model);
/* Appends a sampler of `type` (WL_SAMPLER_*) with its parameters (see the types' comments);
 * returns the chain's length. A grammar that does not parse is WL_E_ARG. */
int32_t wl_sampler_chain_add(int32_t sampler, int32_t type, const float * f, int32_t nf,
                             const int32_t * i, int32_t ni, const char * text, int32_t text_len);
int32_t wl_sampler_free(int32_t sampler);
int32_t wl_sampler_reset(int32_t sampler);
/* Feed tokens the chain should remember (e.g. the prompt, for repetition penalties and DRY);
 * a grammar skips them: it only advances with the tokens the chain samples. */
int32_t wl_sampler_accept(int32_t sampler, const int32_t * tokens, int32_t n);
/* Samples a token from an output of ctx's last decode (idx as for wl_context_logits) and
 * accepts it; returns the token. */
int32_t wl_sampler_sample(int32_t sampler, int32_t ctx, int32_t idx);

/* ---- host services -------------------------------------------------------------------------
 * Inside wasm these are imports from module "wasillama"; natively the host registers them. */
typedef int32_t (*wl_host_read_fn)(int32_t source, int64_t offset, void * dst, int32_t len);
typedef void (*wl_host_log_fn)(int32_t level, const char * text, int32_t len);
#ifndef __wasm__
int32_t wl_set_host(wl_host_read_fn read_fn, wl_host_log_fn log_fn);
/* Registers ggml's compute backends; call once, after wl_init, before loading a model.
 * A dispatch build (WASILLAMA_CPU=dispatch) keeps its CPU backend as one module per CPU variant
 * (libggml-cpu-<variant>.so) in `dir`: this loads the variant named by `cpu_variant`, or when that
 * is NULL or "" the best one this CPU can run (ggml's score: every instruction set the variant is
 * compiled for must be present; none can run -> WL_E_UNSUPPORTED, never SIGILL), and any GPU
 * backend modules in `dir`. Builds with the CPU code built in accept only NULL, "" or their own
 * variant name ("native", "portable"). Writes "<variant>\n" then "FEATURE=value\n" for each
 * feature of the CPU backend into buf; returns the full length. Later calls return the same. */
int32_t wl_backends_load(const char * dir, const char * cpu_variant, char * buf, int32_t cap);
#endif

#ifdef __cplusplus
}
#endif

#endif /* WASILLAMA_SHIM_H */
