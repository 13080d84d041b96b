// wasillama shim implementation. See wasillama.h for the ABI rules.
//
// Every exported function is wrapped by `guarded()`: C++ exceptions (llama.cpp throws on bad
// input and on allocation failure) become WL_E_* codes plus a message, never an unwind across
// the ABI.
#include "wasillama.h"

#include "chat.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "gguf.h"
#include "json-schema-to-grammar.h"
#include "llama.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(WL_BACKEND_DL)
#include <dirent.h>
#include <dlfcn.h>
#endif

#if defined(__wasm__)
#define WL_EXPORT(name) __attribute__((export_name(#name), used))
// Host services, provided by the Python host as imports of module "wasillama".
extern "C" __attribute__((import_module("wasillama"), import_name("host_read")))
int32_t wl_import_host_read(int32_t source, int64_t offset, void * dst, int32_t len);
extern "C" __attribute__((import_module("wasillama"), import_name("host_log")))
void wl_import_host_log(int32_t level, const char * text, int32_t len);
static int32_t host_read(int32_t s, int64_t o, void * d, int32_t n) { return wl_import_host_read(s, o, d, n); }
static void host_log(int32_t l, const char * t, int32_t n) { wl_import_host_log(l, t, n); }
#else
#if defined(_WIN32)
#define WL_EXPORT(name) __declspec(dllexport)
#else
#define WL_EXPORT(name) __attribute__((visibility("default")))
#endif
static wl_host_read_fn g_read_fn = nullptr;
static wl_host_log_fn  g_log_fn  = nullptr;
static int32_t host_read(int32_t s, int64_t o, void * d, int32_t n) { return g_read_fn ? g_read_fn(s, o, d, n) : -1; }
static void host_log(int32_t l, const char * t, int32_t n) { if (g_log_fn) g_log_fn(l, t, n); }
#endif

// The pinned llama.cpp commit (wasm/LLAMA_CPP_COMMIT), passed by both builds.
#ifndef WL_LLAMA_CPP_COMMIT
#define WL_LLAMA_CPP_COMMIT "unknown"
#endif

// The structs as ABI 2.1 first published them: the smallest a host may pass. A field added
// later grows sizeof past these; the constants never change.
constexpr size_t WL_MODEL_PARAMS_SIZE_2_1   = 32;
constexpr size_t WL_MODEL_INFO_SIZE_2_1     = 152;
constexpr size_t WL_CONTEXT_PARAMS_SIZE_2_1 = 56;
static_assert(sizeof(wl_model_params) == WL_MODEL_PARAMS_SIZE_2_1, "wl_model_params layout is part of the ABI");
static_assert(sizeof(wl_model_info) == WL_MODEL_INFO_SIZE_2_1, "wl_model_info layout is part of the ABI");
static_assert(sizeof(wl_context_params) == WL_CONTEXT_PARAMS_SIZE_2_1 + 4, "wl_context_params layout is part of the ABI");

namespace {

struct wl_error : std::runtime_error {
    int32_t code;
    wl_error(int32_t c, const std::string & msg) : std::runtime_error(msg), code(c) {}
};

struct Model {
    llama_model * model = nullptr;
    // The model's own chat templates, parsed on first use (wl_chat_apply); calls from several
    // threads share them under chat_mu.
    std::mutex chat_mu;
    std::shared_ptr<common_chat_templates> chat_templates;
    ~Model() {
        chat_templates.reset();  // before the vocabulary they were made from
        if (model) llama_model_free(model);
    }
    const llama_vocab * vocab() const { return llama_model_get_vocab(model); }
};

// A LoRA adapter of a model. llama.cpp frees adapters with their model; holding the model keeps
// it alive as long as the adapter, and contexts that use an adapter hold it.
struct Lora {
    std::shared_ptr<Model> model;
    llama_adapter_lora * adapter = nullptr;
    ~Lora() { if (adapter) llama_adapter_lora_free(adapter); }
};

struct Context {
    std::shared_ptr<Model> owner;  // keeps the weights alive while the context exists
    std::vector<std::shared_ptr<Lora>> loras;  // the adapters set on it
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    // Read by llama.cpp's abort callback between graph nodes; written by the host, from any
    // thread (natively) or straight into guest memory (wasm): a plain int32 in memory.
    std::atomic<int32_t> abort_flag{0};
    // Outputs the last llama_decode produced: sampling or reading logits without any would
    // trip an assertion inside llama.cpp (a trap in wasm, the end of the process natively).
    int32_t n_outputs = 0;
    std::vector<int32_t> output_pos;  // batch positions of the last decode's outputs, in order
    bool kv_unified = false;
    bool embeddings = false;
    bool x86_numerics = false;  // WL_NUMERICS_X86 (wasm: set around each of its decodes)
    // After the cache changed or a decode started, the old outputs can no longer be read.
    void forget_outputs() {
        n_outputs = 0;
        output_pos.clear();
    }
#if defined(__wasm__)
    // the thread pool its graphs run on (null with one thread); see start_thread_pool. Natively
    // ggml-cpu is a backend loaded at run time, not linked: llama.cpp manages its threads there.
    ggml_threadpool * threadpool = nullptr;
#endif
    ~Context() {
        if (ctx) llama_free(ctx);
#if defined(__wasm__)
        if (threadpool) ggml_threadpool_free(threadpool);  // joins its threads
#endif
    }
};
static_assert(sizeof(std::atomic<int32_t>) == sizeof(int32_t), "the host writes the abort flag as an int32");

struct Sampler {
    std::shared_ptr<Model> model;  // the vocabulary its samplers use stays alive with it
    llama_sampler * chain = nullptr;
    // llama.cpp asserts (ending the process) when a chain selects no token: the last sampler
    // must be greedy, dist or mirostat.
    bool ends_with_selector = false;
    // A grammar is kept out of the chain and checked lazily (as llama.cpp's common sampler does):
    // the chain samples, and only when the grammar rejects that token does it sample again from
    // the tokens the grammar allows. Checking every token of the vocabulary each step costs more
    // than the model on small models. It also sees no history (wl_sampler_accept).
    llama_sampler * grammar = nullptr;
    std::vector<llama_token_data> candidates;  // scratch for sampling with a grammar
    ~Sampler() {
        if (chain) llama_sampler_free(chain);
        if (grammar) llama_sampler_free(grammar);
    }
};

// One table for all objects. Natively the host may call from several threads (models are
// shared), so the table is guarded by one mutex; inside wasm the
// host serialises calls and the mutex is a no-op.
struct Registry {
    std::mutex mu;
    int32_t next = 1;
    std::map<int32_t, std::shared_ptr<Model>>   models;
    std::map<int32_t, std::shared_ptr<Context>> contexts;
    std::map<int32_t, std::shared_ptr<Sampler>> samplers;
    std::map<int32_t, std::shared_ptr<Lora>>    loras;
};

Registry & reg() {
    // Never destroyed: threads still inside the library at exit() must not see freed objects.
    static Registry * r = new Registry;
    return *r;
}

// The first error-level message llama.cpp logged on this thread (since the last clear): load failures are only
// reported through the log, so it becomes part of the exception message.
#if defined(__wasm__)
std::string t_last_log_error;  // the guest is single-threaded (and has no __cxa_thread_atexit)
#else
thread_local std::string t_last_log_error;
#endif

// The message of the last failed call, per thread (errno-style): two threads failing at once
// each read their own. Every failing call sets it; a successful call leaves it alone.
#if defined(__wasm__)
std::string t_last_error;
#else
thread_local std::string t_last_error;
#endif

void set_error(const std::string & msg) { t_last_error = msg; }

template <typename T>
std::shared_ptr<T> lookup(std::map<int32_t, std::shared_ptr<T>> & table, int32_t h, const char * what) {
    std::lock_guard<std::mutex> lk(reg().mu);
    auto it = table.find(h);
    if (it == table.end()) {
        throw wl_error(WL_E_HANDLE, std::string("invalid ") + what + " handle " + std::to_string(h));
    }
    return it->second;
}

template <typename T>
int32_t insert(std::map<int32_t, std::shared_ptr<T>> & table, std::shared_ptr<T> obj) {
    std::lock_guard<std::mutex> lk(reg().mu);
    const int32_t h = reg().next++;
    table[h] = std::move(obj);
    return h;
}

template <typename T>
int32_t erase(std::map<int32_t, std::shared_ptr<T>> & table, int32_t h) {
    std::shared_ptr<T> victim;  // destroyed outside the lock
    {
        std::lock_guard<std::mutex> lk(reg().mu);
        auto it = table.find(h);
        if (it == table.end()) {
            set_error("invalid handle " + std::to_string(h));
            return WL_E_HANDLE;
        }
        victim = std::move(it->second);
        table.erase(it);
    }
    return 0;
}

// Runs f(); converts any exception into a status code and an error message on `handle`.
template <typename F>
int32_t guarded(F && f) {
    try {
        return f();
    } catch (const wl_error & e) {
        set_error(e.what());
        return e.code;
    } catch (const std::bad_alloc &) {
        set_error("out of memory");
        return WL_E_NOMEM;
    } catch (const std::invalid_argument & e) {  // e.g. the tokenizer on invalid UTF-8
        set_error(std::string("invalid argument: ") + e.what());
        return WL_E_ARG;
    } catch (const std::exception & e) {
        set_error(std::string("internal error: ") + e.what());
        return WL_E_INTERNAL;
    } catch (...) {
        set_error("internal error: unknown exception");
        return WL_E_INTERNAL;
    }
}

int32_t copy_out(const std::string & s, char * buf, int32_t cap) {
    if (buf && cap > 0) memcpy(buf, s.data(), std::min<size_t>(s.size(), (size_t) cap));
    return (int32_t) s.size();
}

void require(bool ok, const char * msg) {
    if (!ok) throw wl_error(WL_E_ARG, msg);
}

// Runs f(); an exception from llama.cpp's code becomes `code` with its message after `prefix`
// (ours, and running out of memory, pass through to guarded()).
template <typename F>
auto as_error(int32_t code, const char * prefix, F && f) -> decltype(f()) {
    try {
        return f();
    } catch (const wl_error &) {
        throw;
    } catch (const std::bad_alloc &) {
        throw;
    } catch (const std::exception & e) {
        throw wl_error(code, std::string(prefix) + e.what());
    }
}

common_json parse_json_arg(const char * text, int32_t len, const char * what) {
    require(text != nullptr && len >= 0, "invalid JSON buffer");
    const std::string prefix = std::string(what) + " is not valid JSON: ";
    return as_error(WL_E_ARG, prefix.c_str(), [&] { return common_json::parse(std::string(text, (size_t) len)); });
}

std::string abi_name() { return std::to_string(WL_ABI_VERSION) + "." + std::to_string(WL_ABI_MINOR); }

// A sized struct from the host (see the header): the fields both sides know; zero for those an
// older host lacks; a newer host's fields this module does not know must be zero.
template <class T>
T read_sized(const T * p, size_t first_size, const char * what) {
    const int64_t size = (int64_t) p->size;
    if (size < (int64_t) first_size || size > (1 << 16) || size % (int64_t) sizeof(p->size) != 0) {
        throw wl_error(WL_E_ARG, std::string(what) + ": size " + std::to_string(size) + " is no layout of it (ABI " +
                                 abi_name() + " has " + std::to_string(sizeof(T)) + " bytes)");
    }
    T out = {};
    memcpy(&out, p, std::min(sizeof(T), (size_t) size));
    const unsigned char * bytes = (const unsigned char *) p;
    for (size_t i = sizeof(T); i < (size_t) size; ++i) {
        if (bytes[i] != 0) {
            throw wl_error(WL_E_UNSUPPORTED, std::string(what) + ": the host sets byte " + std::to_string(i) +
                                             ", a field this module (ABI " + abi_name() + ") does not know");
        }
    }
    return out;
}

// A sized struct for the host: as much of `value` as the host has room for.
template <class T>
int32_t write_sized(T * out, T value, const char * what) {
    require(out != nullptr, "out is NULL");
    const int64_t room = (int64_t) out->size;
    if (room < (int64_t) sizeof(out->size) || room % (int64_t) sizeof(out->size) != 0) {
        throw wl_error(WL_E_ARG, std::string(what) + ": size " + std::to_string(room) + " is no layout of it");
    }
    const size_t n = std::min(sizeof(T), (size_t) room);
    value.size = (decltype(value.size)) n;
    memcpy(out, &value, n);
    return (int32_t) sizeof(T);
}

void log_callback(enum ggml_log_level level, const char * text, void *) {
    const int32_t n = (int32_t) strlen(text);
    // Keep the first error since the last clear: it is the specific one ("tensor x has
    // wrong shape"); later lines only say that loading failed.
    if (level == GGML_LOG_LEVEL_ERROR && t_last_log_error.empty()) {
        t_last_log_error.assign(text, n);
        while (!t_last_log_error.empty() && (t_last_log_error.back() == '\n' || t_last_log_error.back() == ' ')) {
            t_last_log_error.pop_back();
        }
    }
    host_log((int32_t) level, text, n);
}

// GGML_ASSERT failures end in abort(): a trap in wasm, the end of the process natively. Say
// why first, so the host can report the assertion instead of a bare crash.
void abort_callback(const char * message) {
    const std::string text = std::string("ggml abort: ") + (message ? message : "") + "\n";
    host_log(GGML_LOG_LEVEL_ERROR, text.c_str(), (int32_t) text.size());
}

// `split` receives a copy of tensor_split padded to llama_max_devices() entries (llama.cpp reads
// that many); it must outlive the load.
llama_model_params to_llama(const wl_model_params * raw, const float * tensor_split, int32_t n_split,
                            std::vector<float> & split) {
    llama_model_params mp = llama_model_default_params();
    if (!raw) return mp;
    const wl_model_params params = read_sized(raw, WL_MODEL_PARAMS_SIZE_2_1, "wl_model_params");
    const wl_model_params * p = &params;
    require(p->split_mode >= LLAMA_SPLIT_MODE_NONE && p->split_mode <= LLAMA_SPLIT_MODE_TENSOR, "unknown split_mode");
    mp.n_gpu_layers  = p->n_gpu_layers;
    mp.main_gpu      = p->main_gpu;
    mp.split_mode    = (enum llama_split_mode) p->split_mode;
    mp.vocab_only    = p->vocab_only != 0;
    mp.check_tensors = p->check_tensors != 0;
    mp.load_mode = p->use_mmap ? (p->use_mlock ? LLAMA_LOAD_MODE_MMAP_MLOCK : LLAMA_LOAD_MODE_MMAP)
                               : (p->use_mlock ? LLAMA_LOAD_MODE_MLOCK : LLAMA_LOAD_MODE_NONE);
    if (tensor_split && n_split > 0) {
        require((size_t) n_split <= llama_max_devices(), "tensor_split has more entries than devices");
        split.assign(llama_max_devices(), 0.0f);
        std::copy(tensor_split, tensor_split + n_split, split.begin());
        mp.tensor_split = split.data();
    }
    return mp;
}

int32_t finish_load(llama_model * m) {
    if (!m) {
        std::string msg = "failed to load model";
        if (!t_last_log_error.empty()) msg += ": " + t_last_log_error;
        throw wl_error(WL_E_LOAD, msg);
    }
    auto obj = std::make_shared<Model>();
    obj->model = m;
    return insert(reg().models, obj);
}

// A FILE* over the host's bytes: llama.cpp's loader reads through it with fread/fseek.
struct HostFile {
    int32_t source;
    int64_t size;
    int64_t pos;
};

#if defined(__wasm__) || defined(__linux__)
ssize_t hostfile_read(void * cookie, char * buf, size_t len) {
    auto * f = (HostFile *) cookie;
    size_t done = 0;
    while (done < len && f->pos < f->size) {
        const int32_t chunk = (int32_t) std::min<size_t>(len - done, 1u << 30);
        const int32_t n = host_read(f->source, f->pos, buf + done, chunk);
        if (n < 0) return -1;
        if (n == 0) break;
        f->pos += n;
        done += (size_t) n;
    }
    return (ssize_t) done;
}

int hostfile_seek(void * cookie, off_t * offset, int whence) {
    auto * f = (HostFile *) cookie;
    int64_t base = whence == SEEK_SET ? 0 : whence == SEEK_CUR ? f->pos : f->size;
    int64_t np = base + (int64_t) *offset;
    if (np < 0) return -1;
    f->pos = np;
    *offset = (off_t) np;
    return 0;
}

int hostfile_close(void * cookie) {
    delete (HostFile *) cookie;
    return 0;
}

FILE * open_host_file(int32_t source, int64_t size) {
    cookie_io_functions_t io = {};
    io.read  = hostfile_read;
    io.seek  = hostfile_seek;
    io.close = hostfile_close;
    auto * cookie = new HostFile{source, size, 0};
    FILE * f = fopencookie(cookie, "rb", io);
    if (!f) {
        delete cookie;
        throw wl_error(WL_E_NOMEM, "could not open the host stream");
    }
    return f;
}
#else
FILE * open_host_file(int32_t, int64_t) {
    throw wl_error(WL_E_UNSUPPORTED, "loading from host bytes needs fopencookie (Linux or wasm)");
}
#endif

// llama.cpp multiplies by LoRA tensors of any type the file names, and ggml's CPU code has no
// kernel for some (F64, I32, ...): a null function pointer called mid-decode (a trap in wasm, the
// end of the process natively). Only the types adapters are written in pass; the stream is
// rewound for the real load.
void require_lora_types(FILE * f) {
    gguf_init_params params = {/* .no_alloc = */ true, /* .ctx = */ nullptr};
    gguf_context * g = gguf_init_from_file_ptr(f, params);
    if (!g) throw wl_error(WL_E_LOAD, "failed to load the LoRA adapter: not a valid GGUF file");
    std::string bad;
    for (int64_t i = 0; i < gguf_get_n_tensors(g) && bad.empty(); i++) {
        const ggml_type t = gguf_get_tensor_type(g, i);
        if (t != GGML_TYPE_F32 && t != GGML_TYPE_F16 && t != GGML_TYPE_BF16 && t != GGML_TYPE_Q8_0) {
            bad = std::string("tensor '") + gguf_get_tensor_name(g, i) + "' is of type " + ggml_type_name(t) +
                  " (adapters are F32, F16, BF16 or Q8_0)";
        }
    }
    gguf_free(g);
    if (!bad.empty()) throw wl_error(WL_E_LOAD, "failed to load the LoRA adapter: " + bad);
    if (fseek(f, 0, SEEK_SET) != 0) throw wl_error(WL_E_LOAD, "failed to load the LoRA adapter: cannot rewind");
}

int32_t tok_flags_check(int32_t flags) {
    require((flags & ~(WL_TOK_ADD_SPECIAL | WL_TOK_PARSE_SPECIAL)) == 0, "unknown tokenizer flags");
    return flags;
}

// KV cache types llama.cpp can store (the enum has holes and removed types of block size 0).
bool kv_cache_type_ok(int32_t t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16: case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q4_0: case GGML_TYPE_Q4_1: case GGML_TYPE_IQ4_NL: case GGML_TYPE_Q5_0:
        case GGML_TYPE_Q5_1:
            return true;
        default:
            return false;
    }
}

bool abort_cb(void * data) {
    return ((Context *) data)->abort_flag.load(std::memory_order_relaxed) != 0;
}

// The context `ctx`, once `seq` is known to be one of its sequences (or -1, every sequence,
// where the call allows it).
std::shared_ptr<Context> context_seq(int32_t ctx, int32_t seq, bool every = false) {
    auto c = lookup(reg().contexts, ctx, "context");
    require((every && seq == -1) || (seq >= 0 && seq < (int32_t) llama_n_seq_max(c->ctx)), "sequence id out of range");
    return c;
}

// The model's log-probability of `chosen` (log-softmax of the raw logits: what the model thinks,
// before any sampler) and of its n_top most likely tokens, most likely first.
void log_probs(const float * logits, int32_t n_vocab, llama_token chosen, int32_t n_top, float * out_chosen,
                      int32_t * out_tokens, float * out_top, std::vector<float> & scratch) {
    float max = -INFINITY;
    for (int32_t t = 0; t < n_vocab; t++) max = std::max(max, logits[t]);
    double sum = 0.0;
    for (int32_t t = 0; t < n_vocab; t++) sum += std::exp((double) (logits[t] - max));
    const float log_z = max + (float) std::log(sum);
    *out_chosen = logits[chosen] - log_z;
    if (n_top == 0) return;
    scratch.assign(logits, logits + n_vocab);
    std::vector<int32_t> ids((size_t) n_vocab);
    for (int32_t t = 0; t < n_vocab; t++) ids[(size_t) t] = t;
    const int32_t k = std::min(n_top, n_vocab);
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
        return scratch[(size_t) a] > scratch[(size_t) b] || (scratch[(size_t) a] == scratch[(size_t) b] && a < b);
    });
    for (int32_t j = 0; j < n_top; j++) {
        out_tokens[j] = j < k ? ids[(size_t) j] : -1;
        out_top[j] = j < k ? scratch[(size_t) ids[(size_t) j]] - log_z : -INFINITY;
    }
}

// A chain may sample from a context when it picks a token in the end and speaks its model's vocabulary.
// idx >= 0: the batch position of a token of the last decode that had an output; idx < 0: counts
// back from its last output.
void require_output(const Context & c, int32_t idx) {
    if (idx >= 0) {
        if (!std::binary_search(c.output_pos.begin(), c.output_pos.end(), idx)) {
            throw wl_error(WL_E_ARG, "token " + std::to_string(idx) + " of the last decode has no output");
        }
    } else if (-(int64_t) idx > c.n_outputs) {
        throw wl_error(WL_E_ARG, "output " + std::to_string(idx) + " does not exist: the last decode had " +
                                     std::to_string(c.n_outputs));
    }
}

// Samples (and accepts) a token from output idx; with a grammar, lazily (see Sampler::grammar).
llama_token sample_token(Sampler & s, llama_context * ctx, int32_t idx) {
    if (!s.grammar) return llama_sampler_sample(s.chain, ctx, idx);
    const float * logits = llama_get_logits_ith(ctx, idx);
    const int32_t n_vocab = llama_vocab_n_tokens(s.model->vocab());
    auto & cur = s.candidates;
    cur.resize((size_t) n_vocab);
    auto candidates = [&] {
        for (llama_token t = 0; t < n_vocab; t++) cur[(size_t) t] = {t, logits[t], 0.0f};
        return llama_token_data_array{cur.data(), cur.size(), -1, false};
    };
    llama_token_data_array all = candidates();
    llama_sampler_apply(s.chain, &all);
    llama_token id = all.data[all.selected].id;
    llama_token_data one = {id, 1.0f, 0.0f};
    llama_token_data_array single = {&one, 1, -1, false};
    llama_sampler_apply(s.grammar, &single);
    if (single.data[0].logit == -INFINITY) {  // rejected: sample again among what the grammar allows
        all = candidates();
        llama_sampler_apply(s.grammar, &all);
        llama_sampler_apply(s.chain, &all);
        if (all.selected < 0 || all.data[all.selected].logit == -INFINITY) {
            throw wl_error(WL_E_ARG, "no token the grammar allows is left (a logit bias or ignore_eos excludes them all)");
        }
        id = all.data[all.selected].id;
    }
    llama_sampler_accept(s.grammar, id);
    llama_sampler_accept(s.chain, id);
    return id;
}

void check_can_sample(const Sampler & s, const Context & c) {
    require(s.ends_with_selector, "the sampler chain must end with greedy, dist, mirostat or mirostat_v2");
    require(s.model == c.owner, "the sampler chain belongs to another model than the context");
}

// Positions continue per sequence after the last one held in the KV cache.
llama_pos next_pos(llama_context * ctx, llama_seq_id seq) {
    return llama_memory_seq_pos_max(llama_get_memory(ctx), seq) + 1;
}

int32_t decode_checked(Context & c, llama_batch & batch) {
    c.forget_outputs();
#if defined(__wasm__)
    // one switch for the whole module, so set for each decode: contexts of one model may differ
    ggml_cpu_set_x86_numerics(c.x86_numerics);
#endif
    const int32_t rc = llama_decode(c.ctx, batch);
    // An abort is for the decode in progress: one that arrives as it finishes must not stop
    // the next, unrelated one.
    c.abort_flag.store(0);
    if (rc == 0) {
        for (int32_t i = 0; i < batch.n_tokens; i++) {
            if (batch.logits[i]) c.output_pos.push_back(i);
        }
        c.n_outputs = (int32_t) c.output_pos.size();
        return 0;
    }
    if (rc == 1) throw wl_error(WL_E_CTX_FULL, "the context is full: no KV cache slot for the batch");
    if (rc == 2) throw wl_error(WL_E_ABORTED, "decode aborted by the host");
    throw wl_error(WL_E_DECODE, "llama_decode failed with status " + std::to_string(rc));
}

template <typename Get>
int32_t meta_by_index(int32_t model, int32_t i, char * buf, int32_t cap, Get get) {
    return guarded([&] {
        auto m = lookup(reg().models, model, "model");
        require(i >= 0 && i < llama_model_meta_count(m->model), "metadata index out of range");
        const int32_t n = get(m->model, i, nullptr, 0);
        std::string s((size_t) std::max(n, 0) + 1, '\0');
        get(m->model, i, s.data(), s.size());
        s.resize((size_t) std::max(n, 0));
        return copy_out(s, buf, cap);
    });
}

}  // namespace

extern "C" {

WL_EXPORT(wl_abi_version) int32_t wl_abi_version(void) { return (WL_ABI_VERSION << 16) | WL_ABI_MINOR; }

WL_EXPORT(wl_init) int32_t wl_init(void) {
    return guarded([] {
        static std::once_flag once;
        std::call_once(once, [] {
            llama_log_set(log_callback, nullptr);
            ggml_set_abort_callback(abort_callback);
            llama_backend_init();
        });
        return 0;
    });
}

WL_EXPORT(wl_error_last) int32_t wl_error_last(char * buf, int32_t cap) { return copy_out(t_last_error, buf, cap); }

WL_EXPORT(wl_system_info) int32_t wl_system_info(char * buf, int32_t cap) {
    return guarded([&] {
        return copy_out(std::string("ggml ") + ggml_version() + ", llama.cpp " + WL_LLAMA_CPP_COMMIT + " | " +
                        llama_print_system_info(), buf, cap);
    });
}

WL_EXPORT(wl_devices) int32_t wl_devices(char * buf, int32_t cap) {
    return guarded([&] {
        std::string out;
        for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
            ggml_backend_dev_t dev = ggml_backend_dev_get(i);
            size_t free = 0, total = 0;
            ggml_backend_dev_memory(dev, &free, &total);
            const enum ggml_backend_dev_type t = ggml_backend_dev_type(dev);
            const char * type = t == GGML_BACKEND_DEVICE_TYPE_CPU ? "cpu" : (t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU) ? "gpu" : "other";
            out += std::string(ggml_backend_dev_name(dev)) + "\t" + ggml_backend_dev_description(dev) + "\t" + type +
                   "\t" + std::to_string(free) + "\t" + std::to_string(total) + "\n";
        }
        return copy_out(out, buf, cap);
    });
}

#ifndef __wasm__
WL_EXPORT(wl_set_host) int32_t wl_set_host(wl_host_read_fn read_fn, wl_host_log_fn log_fn) {
    g_read_fn = read_fn;
    g_log_fn  = log_fn;
    return 0;
}

}  // extern "C"

#ifndef WL_CPU_BUILD
#define WL_CPU_BUILD "builtin"
#endif

namespace {

// "FEATURE=value\n" for each feature the CPU backend reports (the instruction sets it was compiled for).
std::string cpu_features() {
    for (size_t i = 0; i < ggml_backend_reg_count(); i++) {
        ggml_backend_reg_t reg = ggml_backend_reg_get(i);
        if (strcmp(ggml_backend_reg_name(reg), "CPU") != 0) continue;
        auto get = (ggml_backend_get_features_t) ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
        std::string out;
        for (ggml_backend_feature * f = get ? get(reg) : nullptr; f && f->name; f++) {
            out += std::string(f->name) + "=" + f->value + "\n";
        }
        return out;
    }
    throw wl_error(WL_E_UNSUPPORTED, "no CPU backend is registered");
}

#if defined(WL_BACKEND_DL)
struct cpu_variant {
    std::string name, path;
    int score;  // ggml_backend_score(): 0 = this CPU lacks an instruction set the variant needs
    std::string load_error;  // why dlopen failed (then score is 0 too)
};

bool has_affix(const std::string & s, const std::string & prefix, const std::string & suffix) {
    return s.size() > prefix.size() + suffix.size() && s.compare(0, prefix.size(), prefix) == 0 &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> module_files(const std::string & dir, const std::string & prefix) {
    std::vector<std::string> names;
    DIR * d = opendir(dir.c_str());
    if (!d) throw wl_error(WL_E_UNSUPPORTED, "cannot list the backend folder " + dir + ": " + strerror(errno));
    while (const dirent * e = readdir(d)) {
        if (has_affix(e->d_name, prefix, ".so")) names.emplace_back(e->d_name);
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
}

// Every CPU variant in `dir` with its score. The score function is compiled without the variant's
// instruction sets (ggml's cpu-feats), so asking is safe on any CPU of the architecture.
std::vector<cpu_variant> cpu_variants(const std::string & dir) {
    const std::string prefix = "libggml-cpu-";
    std::vector<cpu_variant> out;
    for (const std::string & file : module_files(dir, prefix)) {
        cpu_variant v{file.substr(prefix.size(), file.size() - prefix.size() - 3), dir + "/" + file, 0};
        if (void * h = dlopen(v.path.c_str(), RTLD_NOW | RTLD_LOCAL)) {
            if (auto score = (int (*)(void)) dlsym(h, "ggml_backend_score")) v.score = score();
            dlclose(h);
        } else {
            const char * why = dlerror();
            v.load_error = why ? why : "dlopen failed";
        }
        out.push_back(std::move(v));
    }
    return out;
}

std::string load_cpu_variant(const std::string & dir, const std::string & wanted) {
    const std::vector<cpu_variant> all = cpu_variants(dir);
    std::string names;
    for (const cpu_variant & v : all) names += (names.empty() ? "" : ", ") + v.name;
    const cpu_variant * pick = nullptr;
    for (const cpu_variant & v : all) {
        if (wanted.empty() ? (v.score > 0 && (!pick || v.score > pick->score)) : v.name == wanted) pick = &v;
    }
    if (!pick && wanted.empty()) {
        throw wl_error(WL_E_UNSUPPORTED, "none of the CPU variants in " + dir + " (" + (names.empty() ? "none" : names) +
                                             ") can run on this CPU");
    }
    if (!pick) {
        throw wl_error(WL_E_UNSUPPORTED, "no CPU variant '" + wanted + "' in " + dir + " (there are: " + names + ")");
    }
    if (!pick->load_error.empty()) {
        throw wl_error(WL_E_UNSUPPORTED, "CPU variant '" + wanted + "' cannot be loaded: " + pick->load_error);
    }
    if (pick->score <= 0) {
        throw wl_error(WL_E_UNSUPPORTED, "CPU variant '" + wanted + "' needs instructions this CPU does not have");
    }
    if (!ggml_backend_load(pick->path.c_str())) {
        throw wl_error(WL_E_INTERNAL, "ggml could not load the CPU variant " + pick->path);
    }
    return pick->name;
}
#endif

std::mutex g_backends_mu;
std::string g_backends_desc;  // what wl_backends_load loaded, once

}  // namespace

extern "C" {

WL_EXPORT(wl_backends_load) int32_t wl_backends_load(const char * dir, const char * cpu_variant, char * buf, int32_t cap) {
    return guarded([&] {
        const std::string wanted = cpu_variant ? cpu_variant : "";
        std::lock_guard<std::mutex> lk(g_backends_mu);
        if (!g_backends_desc.empty()) {
            const std::string loaded = g_backends_desc.substr(0, g_backends_desc.find('\n'));
            if (!wanted.empty() && wanted != loaded) {
                throw wl_error(WL_E_ARG, "the CPU variant '" + loaded + "' is already loaded in this process");
            }
            return copy_out(g_backends_desc, buf, cap);
        }
#if defined(WL_BACKEND_DL)
        require(dir && *dir, "wl_backends_load: no backend folder");
        // GPU backends first (as ggml orders them); a module whose score is 0 is skipped by ggml.
        for (const std::string & file : module_files(dir, "libggml-")) {
            if (file.compare(0, 12, "libggml-cpu-") != 0) ggml_backend_load((std::string(dir) + "/" + file).c_str());
        }
        const std::string variant = load_cpu_variant(dir, wanted);
#else
        (void) dir;
        const std::string variant = WL_CPU_BUILD;
        if (!wanted.empty() && wanted != variant) {
            throw wl_error(WL_E_UNSUPPORTED, "this build has its CPU code built in (" + variant +
                                                 "); rebuild with WASILLAMA_CPU=dispatch to choose a variant");
        }
#endif
        g_backends_desc = variant + "\n" + cpu_features();
        return copy_out(g_backends_desc, buf, cap);
    });
}

#endif  // !__wasm__

// ---- models ----------------------------------------------------------------------------------

WL_EXPORT(wl_model_load_host) int32_t wl_model_load_host(int32_t source, int64_t size, const wl_model_params * p,
                                                         const float * tensor_split, int32_t n_split) {
    return guarded([&] {
        if (size <= 0) throw wl_error(WL_E_LOAD, "failed to load model: the model is empty (0 bytes)");
        std::vector<float> split;
        llama_model_params mp = to_llama(p, tensor_split, n_split, split);
        mp.load_mode = LLAMA_LOAD_MODE_NONE;  // a stream cannot be mapped
        mp.lazy_mode = LLAMA_LAZY_MODE_OFF;   // read every byte now; the stream closes below
        t_last_log_error.clear();
        std::unique_ptr<FILE, int (*)(FILE *)> f(open_host_file(source, size), fclose);
        return finish_load(llama_model_load_from_file_ptr(f.get(), mp));
    });
}

WL_EXPORT(wl_model_load_path) int32_t wl_model_load_path(const char * path, const wl_model_params * p,
                                                         const float * tensor_split, int32_t n_split) {
    return guarded([&]() -> int32_t {
#if defined(__wasm__)
        (void) path; (void) p; (void) tensor_split; (void) n_split;
        throw wl_error(WL_E_UNSUPPORTED, "the sandbox has no filesystem: load models through the host");
#else
        require(path != nullptr, "path is NULL");
        std::vector<float> split;
        llama_model_params mp = to_llama(p, tensor_split, n_split, split);
        t_last_log_error.clear();
        return finish_load(llama_model_load_from_file(path, mp));
#endif
    });
}

WL_EXPORT(wl_model_free) int32_t wl_model_free(int32_t model) { return erase(reg().models, model); }

WL_EXPORT(wl_lora_load_host) int32_t wl_lora_load_host(int32_t model, int32_t source, int64_t size) {
    return guarded([&] {
        auto m = lookup(reg().models, model, "model");
        if (size <= 0) throw wl_error(WL_E_LOAD, "failed to load the LoRA adapter: it is empty (0 bytes)");
        t_last_log_error.clear();
        std::unique_ptr<FILE, int (*)(FILE *)> f(open_host_file(source, size), fclose);
        require_lora_types(f.get());
        llama_adapter_lora * a = llama_adapter_lora_init_from_file_ptr(m->model, f.get());
        if (!a) {
            throw wl_error(WL_E_LOAD, "failed to load the LoRA adapter" +
                                          (t_last_log_error.empty() ? std::string() : ": " + t_last_log_error));
        }
        auto lora = std::make_shared<Lora>();
        lora->model = m;
        lora->adapter = a;
        return insert(reg().loras, lora);
    });
}

WL_EXPORT(wl_lora_free) int32_t wl_lora_free(int32_t lora) { return erase(reg().loras, lora); }

WL_EXPORT(wl_context_set_loras) int32_t wl_context_set_loras(int32_t ctx, const int32_t * loras, const float * scales,
                                                           int32_t n) {
    return guarded([&] {
        require(n >= 0 && (n == 0 || (loras && scales)), "invalid adapter arrays");
        auto c = lookup(reg().contexts, ctx, "context");
        std::vector<std::shared_ptr<Lora>> held;
        std::vector<llama_adapter_lora *> adapters;
        std::vector<float> s(scales, scales + n);
        for (int32_t i = 0; i < n; i++) {
            auto l = lookup(reg().loras, loras[i], "LoRA");
            require(l->model->model == c->model, "the LoRA adapter belongs to another model");
            for (auto & h : held) require(h != l, "a LoRA adapter appears twice");
            require(std::isfinite(s[(size_t) i]), "a LoRA scale is not a finite number");
            held.push_back(l);
            adapters.push_back(l->adapter);
        }
        if (llama_set_adapters_lora(c->ctx, adapters.data(), adapters.size(), s.data()) != 0) {
            throw wl_error(WL_E_INTERNAL, "llama.cpp refused the LoRA adapters");
        }
        c->loras = std::move(held);
        c->forget_outputs();  // logits of the last decode came from the other weights
        return n;
    });
}

WL_EXPORT(wl_model_info_get) int32_t wl_model_info_get(int32_t model, wl_model_info * out) {
    return guarded([&] {
        require(out != nullptr, "out is NULL");
        auto m = lookup(reg().models, model, "model");
        const llama_vocab * v = m->vocab();
        wl_model_info info = {};
        info.n_params    = (int64_t) llama_model_n_params(m->model);
        info.size_bytes  = (int64_t) llama_model_size(m->model);
        info.n_ctx_train = llama_model_n_ctx_train(m->model);
        info.n_embd      = llama_model_n_embd(m->model);
        info.n_layer     = llama_model_n_layer(m->model);
        if (info.n_layer > 0) {  // a vocab-only model has no layers: n_head() aborts on it
            info.n_head    = llama_model_n_head(m->model);
            info.n_head_kv = llama_model_n_head_kv(m->model);
        }
        info.n_vocab     = llama_vocab_n_tokens(v);
        info.vocab_type  = (int64_t) llama_vocab_type(v);
        info.token_bos   = llama_vocab_bos(v);
        info.token_eos   = llama_vocab_eos(v);
        info.token_eot   = llama_vocab_eot(v);
        info.token_nl    = llama_vocab_nl(v);
        info.add_bos     = llama_vocab_get_add_bos(v);
        info.add_eos     = llama_vocab_get_add_eos(v);
        info.has_encoder = llama_model_has_encoder(m->model);
        info.has_decoder = llama_model_has_decoder(m->model);
        info.n_swa       = llama_model_n_swa(m->model);
        return write_sized(out, info, "wl_model_info");
    });
}

WL_EXPORT(wl_model_meta) int32_t wl_model_meta(int32_t model, const char * key, char * buf, int32_t cap) {
    return guarded([&] {
        require(key != nullptr, "key is NULL");
        auto m = lookup(reg().models, model, "model");
        const int32_t n = llama_model_meta_val_str(m->model, key, nullptr, 0);
        if (n < 0) throw wl_error(WL_E_ARG, std::string("no metadata key ") + key);
        std::string s((size_t) n + 1, '\0');
        llama_model_meta_val_str(m->model, key, s.data(), s.size());
        s.resize((size_t) n);
        return copy_out(s, buf, cap);
    });
}

WL_EXPORT(wl_model_meta_count) int32_t wl_model_meta_count(int32_t model) {
    return guarded([&] { return llama_model_meta_count(lookup(reg().models, model, "model")->model); });
}

WL_EXPORT(wl_model_meta_key) int32_t wl_model_meta_key(int32_t model, int32_t i, char * buf, int32_t cap) {
    return meta_by_index(model, i, buf, cap, llama_model_meta_key_by_index);
}

WL_EXPORT(wl_model_meta_value) int32_t wl_model_meta_value(int32_t model, int32_t i, char * buf, int32_t cap) {
    return meta_by_index(model, i, buf, cap, llama_model_meta_val_str_by_index);
}

WL_EXPORT(wl_model_desc) int32_t wl_model_desc(int32_t model, char * buf, int32_t cap) {
    return guarded([&] {
        auto m = lookup(reg().models, model, "model");
        char tmp[256];
        const int32_t n = llama_model_desc(m->model, tmp, sizeof tmp);
        return copy_out(std::string(tmp, (size_t) std::max(0, std::min<int32_t>(n, sizeof tmp - 1))), buf, cap);
    });
}

WL_EXPORT(wl_model_chat_template) int32_t wl_model_chat_template(int32_t model, const char * name, char * buf, int32_t cap) {
    return guarded([&] {
        auto m = lookup(reg().models, model, "model");
        const char * t = llama_model_chat_template(m->model, (name && *name) ? name : nullptr);
        if (!t) throw wl_error(WL_E_TEMPLATE, "the model has no chat template");
        return copy_out(t, buf, cap);
    });
}

// ---- vocabulary ------------------------------------------------------------------------------

WL_EXPORT(wl_vocab_tokenize) int32_t wl_vocab_tokenize(int32_t model, const char * text, int32_t len, int32_t flags,
                                           int32_t * out, int32_t cap) {
    return guarded([&] {
        require(len >= 0 && (text || len == 0), "invalid text buffer");
        tok_flags_check(flags);
        auto m = lookup(reg().models, model, "model");
        const bool add = flags & WL_TOK_ADD_SPECIAL, parse = flags & WL_TOK_PARSE_SPECIAL;
        int32_t n = llama_tokenize(m->vocab(), text ? text : "", len, out, out ? cap : 0, add, parse);
        if (n == INT32_MIN) throw wl_error(WL_E_ARG, "the text has too many tokens");
        return n < 0 ? -n : n;  // a negative count means "buffer too small; this many needed"
    });
}

WL_EXPORT(wl_vocab_detokenize) int32_t wl_vocab_detokenize(int32_t model, const int32_t * tokens, int32_t n, int32_t flags,
                                               char * buf, int32_t cap) {
    return guarded([&] {
        require(n >= 0 && (tokens || n == 0), "invalid token buffer");
        tok_flags_check(flags);
        auto m = lookup(reg().models, model, "model");
        const int32_t n_vocab = llama_vocab_n_tokens(m->vocab());
        for (int32_t i = 0; i < n; i++) require(tokens[i] >= 0 && tokens[i] < n_vocab, "token id out of range");
        const bool keep = flags & WL_TOK_ADD_SPECIAL, render = flags & WL_TOK_PARSE_SPECIAL;
        int32_t r = llama_detokenize(m->vocab(), tokens, n, buf, buf ? cap : 0, !keep, render);
        return r < 0 ? -r : r;
    });
}

WL_EXPORT(wl_vocab_piece) int32_t wl_vocab_piece(int32_t model, int32_t token, int32_t flags, char * buf, int32_t cap) {
    return guarded([&] {
        tok_flags_check(flags);
        auto m = lookup(reg().models, model, "model");
        require(token >= 0 && token < llama_vocab_n_tokens(m->vocab()), "token id out of range");
        int32_t r = llama_token_to_piece(m->vocab(), token, buf, buf ? cap : 0, 0, flags & WL_TOK_PARSE_SPECIAL);
        return r < 0 ? -r : r;
    });
}

WL_EXPORT(wl_vocab_is_eog) int32_t wl_vocab_is_eog(int32_t model, int32_t token) {
    return guarded([&] {
        auto m = lookup(reg().models, model, "model");
        return (int32_t) llama_vocab_is_eog(m->vocab(), token);
    });
}

WL_EXPORT(wl_json_schema_to_grammar) int32_t wl_json_schema_to_grammar(const char * schema, int32_t len, char * buf,
                                                                     int32_t cap) {
    return guarded([&] {
        require(schema != nullptr && len >= 0 && cap >= 0 && (buf || cap == 0), "invalid arguments");
        const std::string text(schema, (size_t) len);
        // The parser and the converter recurse per nesting level: refuse depths that would run
        // the stack out (a trap in wasm, the end of the process natively) before either runs.
        int32_t depth = 0, deepest = 0;
        bool in_string = false;
        for (size_t i = 0; i < text.size(); i++) {
            const char ch = text[i];
            if (in_string) {
                if (ch == '\\') i++;
                else if (ch == '"') in_string = false;
            } else if (ch == '"') {
                in_string = true;
            } else if (ch == '{' || ch == '[') {
                deepest = std::max(deepest, ++depth);
            } else if (ch == '}' || ch == ']') {
                depth--;
            }
        }
        if (deepest > WL_JSON_SCHEMA_MAX_DEPTH) {
            throw wl_error(WL_E_ARG, "the JSON schema nests " + std::to_string(deepest) + " levels deep; at most " +
                                         std::to_string(WL_JSON_SCHEMA_MAX_DEPTH) + " are accepted");
        }
        const common_json parsed = parse_json_arg(schema, len, "the JSON schema");
        return copy_out(as_error(WL_E_ARG, "", [&] { return json_schema_to_grammar(parsed, /* force_gbnf */ true); }),
                        buf, cap);
    });
}

WL_EXPORT(wl_vocab_eog_tokens) int32_t wl_vocab_eog_tokens(int32_t model, int32_t * out, int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (out || cap == 0), "invalid output buffer");
        auto m = lookup(reg().models, model, "model");
        const llama_vocab * v = m->vocab();
        int32_t n = 0;
        for (llama_token t = 0; t < llama_vocab_n_tokens(v); t++) {
            if (!llama_vocab_is_eog(v, t)) continue;
            if (n < cap) out[n] = t;
            n++;
        }
        return n;
    });
}

WL_EXPORT(wl_model_chat_apply) int32_t wl_model_chat_apply(int32_t model, const char * tmpl, const char * packed, int32_t packed_len,
                                               int32_t n_msg, int32_t add_assistant, char * buf, int32_t cap) {
    return guarded([&] {
        require(n_msg >= 0 && packed_len >= 0 && (packed || packed_len == 0), "invalid message buffer");
        auto m = lookup(reg().models, model, "model");
        if (!tmpl) tmpl = llama_model_chat_template(m->model, nullptr);
        if (!tmpl) throw wl_error(WL_E_TEMPLATE, "the model has no chat template");
        // Unpack (role, content) pairs; every string must end inside the buffer.
        std::vector<llama_chat_message> msgs((size_t) n_msg);
        const char * p = packed;
        const char * end = packed + packed_len;
        auto next = [&]() {
            const void * nul = memchr(p, '\0', (size_t) (end - p));
            require(nul != nullptr, "message strings must be NUL-terminated");
            const char * s = p;
            p = (const char *) nul + 1;
            return s;
        };
        size_t total = 0;
        for (auto & msg : msgs) {
            msg.role = next();
            msg.content = next();
            total += strlen(msg.content) + strlen(msg.role);
        }
        std::string out(std::max<size_t>(2 * total + 256, 1024), '\0');
        int32_t r = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), add_assistant != 0, out.data(), (int32_t) out.size());
        if (r < 0) throw wl_error(WL_E_TEMPLATE, "unsupported chat template (llama.cpp's built-in templates only)");
        if ((size_t) r > out.size()) {
            out.assign((size_t) r, '\0');
            r = llama_chat_apply_template(tmpl, msgs.data(), msgs.size(), add_assistant != 0, out.data(), (int32_t) out.size());
        }
        out.resize((size_t) r);
        return copy_out(out, buf, cap);
    });
}

// ---- chat (llama.cpp's chat code and Jinja engine) ------------------------------------------

}  // extern "C"

namespace {

// The Jinja parser and renderer recurse per nesting level, of blocks ({% if %} ... {% endif %})
// and of brackets inside tags: a template nested deeper than real ones ever are is refused before
// it runs the stack out (a trap in wasm, the end of the process natively). Text outside tags
// does not count.
void check_template_depth(const std::string & src) {
    static const char * const openers[] = {"if", "for", "macro", "call", "filter", "raw", "generation"};
    int32_t blocks = 0, deepest_blocks = 0, deepest_brackets = 0;
    for (size_t i = 0; i + 1 < src.size(); i++) {
        if (src[i] != '{' || (src[i + 1] != '{' && src[i + 1] != '%')) continue;
        const bool statement = src[i + 1] == '%';
        const char close = statement ? '%' : '}';
        size_t j = i + 2;
        if (j < src.size() && (src[j] == '-' || src[j] == '+')) j++;
        while (j < src.size() && isspace((unsigned char) src[j])) j++;
        size_t w = j;
        while (w < src.size() && (isalnum((unsigned char) src[w]) || src[w] == '_')) w++;
        const std::string word = src.substr(j, w - j);
        int32_t brackets = 0;
        char quote = 0;
        size_t k = j;
        for (; k + 1 < src.size(); k++) {
            const char ch = src[k];
            if (quote) {
                if (ch == '\\') k++;
                else if (ch == quote) quote = 0;
            } else if (ch == '\'' || ch == '"') {
                quote = ch;
            } else if (ch == '(' || ch == '[' || ch == '{') {
                deepest_brackets = std::max(deepest_brackets, ++brackets);
            } else if (ch == ')' || ch == ']' || ch == '}') {
                if (ch == '}' && close == '}' && brackets == 0 && src[k + 1] == '}') break;
                brackets--;
            } else if (ch == close && src[k + 1] == '}') {
                break;
            }
        }
        if (statement) {
            if (word.rfind("end", 0) == 0) {
                blocks--;
            } else if (std::find_if(std::begin(openers), std::end(openers),
                                    [&](const char * o) { return word == o; }) != std::end(openers) ||
                       (word == "set" && src.find('=', j) > k)) {  // {% set x %}...{% endset %}
                deepest_blocks = std::max(deepest_blocks, ++blocks);
            }
        }
        i = k;
    }
    if (deepest_blocks > WL_CHAT_TEMPLATE_MAX_DEPTH || deepest_brackets > WL_CHAT_TEMPLATE_MAX_DEPTH) {
        throw wl_error(WL_E_TEMPLATE, "the chat template nests " + std::to_string(std::max(deepest_blocks, deepest_brackets)) +
                                          " levels deep; at most " + std::to_string(WL_CHAT_TEMPLATE_MAX_DEPTH) +
                                          " are accepted");
    }
}

std::shared_ptr<common_chat_templates> chat_templates_of(Model & m, const std::string & override_src) {
    auto make = [&](const std::string & src) {
        check_template_depth(src.empty() ? llama_model_chat_template(m.model, nullptr) : src);
        const char * tool_use = src.empty() ? llama_model_chat_template(m.model, "tool_use") : nullptr;
        if (tool_use) check_template_depth(tool_use);
        return as_error(WL_E_TEMPLATE, "the chat template does not parse: ", [&] {
            return std::shared_ptr<common_chat_templates>(common_chat_templates_init(m.model, src).release(),
                                                          common_chat_templates_free);
        });
    };
    if (!override_src.empty()) return make(override_src);
    std::lock_guard<std::mutex> lock(m.chat_mu);
    if (!m.chat_templates) {
        if (!llama_model_chat_template(m.model, nullptr)) {
            throw wl_error(WL_E_TEMPLATE, "the model has no chat template (pass one)");
        }
        m.chat_templates = make("");
    }
    return m.chat_templates;
}

// The token a string stands for when it is exactly one (control tokens included), else -1.
llama_token single_token(const llama_vocab * vocab, const std::string & text) {
    llama_token tok[2];
    const int32_t n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), tok, 2, false, true);
    return n == 1 ? tok[0] : -1;
}

// What llama-server does with a chat template's result before sampling: triggers of a lazy
// grammar as regular expressions or single tokens, the preserved tokens as ids, and the tokens
// of the generation prompt that a (non-lazy) tool-call grammar must see first.
common_json sampling_of(const llama_vocab * vocab, const common_chat_params & p) {
    std::vector<llama_token> preserved;
    for (const auto & t : p.preserved_tokens) {
        const llama_token id = single_token(vocab, t);
        if (id >= 0) preserved.push_back(id);
    }
    std::vector<std::string> patterns;
    std::vector<llama_token> trigger_tokens;
    for (const auto & t : p.grammar_triggers) {
        switch (t.type) {
            case COMMON_GRAMMAR_TRIGGER_TYPE_WORD: {
                const llama_token id = single_token(vocab, t.value);
                if (id >= 0 && std::find(preserved.begin(), preserved.end(), id) != preserved.end()) {
                    trigger_tokens.push_back(id);
                } else {
                    patterns.push_back(regex_escape(t.value));
                }
                break;
            }
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN: patterns.push_back(t.value); break;
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: {
                const std::string & v = t.value;
                patterns.push_back(v.empty() ? "^$" : (v.front() != '^' ? "^" : "") + v + (v.back() != '$' ? "$" : ""));
                break;
            }
            case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN: trigger_tokens.push_back(t.token); break;
        }
    }
    if (p.grammar_lazy && !p.grammar.empty() && patterns.empty() && trigger_tokens.empty()) {
        throw wl_error(WL_E_TEMPLATE, "the chat template's lazy grammar has no trigger");
    }
    std::vector<llama_token> prefill;
    if (!p.grammar.empty() && !p.grammar_lazy && !p.generation_prompt.empty()) {
        const std::string & gp = p.generation_prompt;
        const std::vector<llama_token> toks = common_tokenize(vocab, gp, false, true);
        for (size_t i = 0; i < toks.size(); i++) {
            // some tokenizers put a space before the first control token (as common/sampling.cpp)
            const std::string piece = common_token_to_piece(vocab, toks[i], true);
            if (i == 0 && !piece.empty() && isspace((unsigned char) piece[0]) && !isspace((unsigned char) gp[0])) continue;
            prefill.push_back(toks[i]);
        }
    }
    return {
        {"grammar", p.grammar},
        {"grammar_lazy", p.grammar_lazy},
        {"trigger_patterns", patterns},
        {"trigger_tokens", trigger_tokens},
        {"grammar_prefill", prefill},
        {"preserved_tokens", preserved},
    };
}

}  // namespace

extern "C" {

WL_EXPORT(wl_chat_apply) int32_t wl_chat_apply(int32_t model, const char * request, int32_t len, char * buf,
                                               int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (buf || cap == 0), "invalid output buffer");
        auto m = lookup(reg().models, model, "model");
        const common_json req = parse_json_arg(request, len, "the chat request");
        require(req.is_object(), "the chat request must be a JSON object");
        common_chat_templates_inputs in;
        std::string override_src;
        as_error(WL_E_ARG, "invalid chat request: ", [&] {
            override_src = req.value("template", std::string());
            in.messages = common_chat_msgs_parse_oaicompat(req.at("messages"));
            if (req.contains("tools")) in.tools = common_chat_tools_parse_oaicompat(req.at("tools"));
            in.tool_choice = common_chat_tool_choice_parse_oaicompat(req.value("tool_choice", std::string("auto")));
            in.parallel_tool_calls = req.value("parallel_tool_calls", false);
            in.add_generation_prompt = req.value("add_generation_prompt", true);
            in.enable_thinking = req.value("enable_thinking", true);
            in.reasoning_format = COMMON_REASONING_FORMAT_DEEPSEEK;  // llama-server's default
            if (req.contains("template_kwargs")) {
                for (const auto & kv : req.at("template_kwargs").items()) in.chat_template_kwargs[kv.key()] = kv.value().dump();
            }
            if (req.contains("now")) {
                in.now = std::chrono::system_clock::time_point(
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(
                        std::chrono::duration<double>(req.at("now").get<double>())));
            }
        });
        auto tmpls = chat_templates_of(*m, override_src);
        const common_chat_params out = as_error(WL_E_TEMPLATE, "the chat template failed: ",
                                                [&] { return common_chat_templates_apply(tmpls.get(), in); });
        common_json result = sampling_of(m->vocab(), out);
        result["prompt"] = out.prompt;
        result["stops"] = out.additional_stops;
        result["format"] = common_chat_format_name(out.format);
        result["parser"] = common_json{
            {"format", (int) out.format},
            {"generation_prompt", out.generation_prompt},
            {"peg", out.parser},
        }.dump();
        return copy_out(result.dump(), buf, cap);
    });
}

WL_EXPORT(wl_chat_parse) int32_t wl_chat_parse(const char * parser, int32_t parser_len, const char * text, int32_t len,
                                               int32_t partial, char * buf, int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (buf || cap == 0) && len >= 0 && (text || len == 0), "invalid buffers");
        const common_json p = parse_json_arg(parser, parser_len, "the parser");
        common_chat_parser_params params;
        as_error(WL_E_ARG, "invalid parser: ", [&] {
            const int format = p.at("format").get<int>();
            require(format >= 0 && format < COMMON_CHAT_FORMAT_COUNT, "unknown chat format");
            params.format = (common_chat_format) format;
            params.generation_prompt = p.at("generation_prompt").get<std::string>();
            params.reasoning_format = COMMON_REASONING_FORMAT_DEEPSEEK;
            const std::string peg = p.at("peg").get<std::string>();
            if (!peg.empty()) params.parser.load(peg);
        });
        const common_chat_msg msg = as_error(WL_E_TEMPLATE, "", [&] {
            return common_chat_parse(std::string(text ? text : "", (size_t) len), partial != 0, params);
        });
        return copy_out(msg.to_json_oaicompat().dump(), buf, cap);
    });
}

// ---- contexts --------------------------------------------------------------------------------

// In wasm, a thread is an instance of the module that the host starts (a millisecond, not a
// pthread's microseconds), so a context keeps one pool for all its graphs, decode and batch alike
// (ggml runs a graph on fewer of a pool's threads), where llama.cpp would start one per graph.
static void start_thread_pool(Context & c, int32_t n_threads) {
#if defined(__wasm__)
    if (n_threads <= 1) return;
    ggml_threadpool_params tpp = ggml_threadpool_params_default(n_threads);
    tpp.poll = 1;  // between graphs, spin ~0.1 ms (not ggml's ~10), then sleep: cores are shared
    c.threadpool = ggml_threadpool_new(&tpp);
    if (!c.threadpool) throw wl_error(WL_E_NOMEM, "could not start " + std::to_string(n_threads) + " threads");
    llama_attach_threadpool(c.ctx, c.threadpool, c.threadpool);
#else
    (void) c;
    (void) n_threads;
#endif
}

WL_EXPORT(wl_context_new) int32_t wl_context_new(int32_t model, const wl_context_params * raw) {
    return guarded([&] {
        require(raw != nullptr, "params is NULL");
        const wl_context_params params = read_sized(raw, WL_CONTEXT_PARAMS_SIZE_2_1, "wl_context_params");
        const wl_context_params * p = &params;
        require(p->n_ctx >= 0 && p->n_batch >= 0 && p->n_ubatch >= 0, "sizes must not be negative");
        auto m = lookup(reg().models, model, "model");
        require(llama_model_n_layer(m->model) > 0, "the model was loaded vocab-only: it cannot run a context");
        require(p->type_k < 0 || kv_cache_type_ok(p->type_k), "unsupported KV cache type_k");
        require(p->type_v < 0 || kv_cache_type_ok(p->type_v), "unsupported KV cache type_v");
        require(p->flash_attn >= -1 && p->flash_attn <= 1, "flash_attn must be -1 (auto), 0 or 1");
        require(p->pooling_type >= -1 && p->pooling_type <= LLAMA_POOLING_TYPE_RANK, "unknown pooling_type");
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = (uint32_t) p->n_ctx;
        if (p->n_batch > 0)  cp.n_batch  = (uint32_t) p->n_batch;
        if (p->n_ubatch > 0) cp.n_ubatch = (uint32_t) p->n_ubatch;
        if (cp.n_ubatch > cp.n_batch) cp.n_ubatch = cp.n_batch;
        if (p->n_seq_max > 0) cp.n_seq_max = (uint32_t) p->n_seq_max;
        if (p->n_threads > 0) cp.n_threads = p->n_threads;
        if (p->n_threads_batch > 0) cp.n_threads_batch = p->n_threads_batch;
        cp.embeddings = p->embeddings != 0;
        cp.flash_attn_type = (enum llama_flash_attn_type) p->flash_attn;
        if (p->type_k >= 0) cp.type_k = (enum ggml_type) p->type_k;
        if (p->type_v >= 0) cp.type_v = (enum ggml_type) p->type_v;
        cp.offload_kqv = p->offload_kqv != 0;
        if (p->pooling_type >= 0) cp.pooling_type = (enum llama_pooling_type) p->pooling_type;
        require(p->kv_unified == 0 || p->kv_unified == 1, "kv_unified must be 0 or 1");
        cp.kv_unified = p->kv_unified != 0;
        require(p->numerics == WL_NUMERICS_FAST || p->numerics == WL_NUMERICS_X86,
                "numerics must be 0 (fast) or 1 (x86)");
#if !defined(__wasm__) && !defined(__x86_64__) && !defined(_M_X64) && !defined(__i386__) && !defined(_M_IX86)
        if (p->numerics == WL_NUMERICS_X86) {
            throw wl_error(WL_E_UNSUPPORTED, "numerics x86: this native build is not an x86 one (it rounds as its own CPU does)");
        }
#endif
        cp.no_perf = true;
        auto c = std::make_shared<Context>();
        cp.abort_callback = abort_cb;
        cp.abort_callback_data = c.get();
        t_last_log_error.clear();
        c->kv_unified = cp.kv_unified;
        c->embeddings = cp.embeddings;
        c->x86_numerics = p->numerics == WL_NUMERICS_X86;
        c->ctx = llama_init_from_model(m->model, cp);
        if (!c->ctx) {
            std::string msg = "failed to create the context";
            if (!t_last_log_error.empty()) msg += ": " + t_last_log_error;
            throw wl_error(WL_E_NOMEM, msg);
        }
        c->owner = m;
        c->model = m->model;
        start_thread_pool(*c, std::max(cp.n_threads, cp.n_threads_batch));
        return insert(reg().contexts, c);
    });
}

WL_EXPORT(wl_context_free) int32_t wl_context_free(int32_t ctx) { return erase(reg().contexts, ctx); }

WL_EXPORT(wl_context_info) int32_t wl_context_info(int32_t ctx, int32_t * out, int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (out || cap == 0), "invalid output buffer");
        auto c = lookup(reg().contexts, ctx, "context");
        const int32_t values[] = {(int32_t) llama_n_ctx(c->ctx), (int32_t) llama_n_batch(c->ctx),
                                  (int32_t) llama_n_ubatch(c->ctx), (int32_t) llama_n_seq_max(c->ctx),
                                  (int32_t) llama_n_ctx_seq(c->ctx), (int32_t) c->embeddings,
                                  (int32_t) llama_pooling_type(c->ctx)};
        const int32_t n = (int32_t) (sizeof values / sizeof values[0]);
        for (int32_t i = 0; i < std::min(n, cap); i++) out[i] = values[i];
        return n;
    });
}

WL_EXPORT(wl_context_abort_flag) int32_t wl_context_abort_flag(int32_t ctx, int32_t ** out_ptr) {
    return guarded([&] {
        require(out_ptr != nullptr, "out_ptr is NULL");
        auto c = lookup(reg().contexts, ctx, "context");
        *out_ptr = reinterpret_cast<int32_t *>(&c->abort_flag);
        return 0;
    });
}

WL_EXPORT(wl_context_decode) int32_t wl_context_decode(int32_t ctx, const int32_t * tokens, int32_t n, const int32_t * pos,
                                                       const int32_t * n_seq_id, const int32_t * seq_ids,
                                                       const int8_t * outputs) {
    return guarded([&] {
        require(n > 0 && tokens, "decode needs at least one token");
        auto c = lookup(reg().contexts, ctx, "context");
        const int32_t n_batch = (int32_t) llama_n_batch(c->ctx);
        if (n > n_batch) {
            throw wl_error(WL_E_ARG, "a batch of " + std::to_string(n) + " tokens is larger than n_batch=" +
                                         std::to_string(n_batch) + ": split it");
        }
        const llama_vocab * vocab = llama_model_get_vocab(c->model);
        const int32_t n_vocab = llama_vocab_n_tokens(vocab);
        const int32_t n_seq = (int32_t) llama_n_seq_max(c->ctx);
        const llama_pos n_ctx_seq = (llama_pos) llama_n_ctx_seq(c->ctx);
        int64_t n_ids = 0;
        for (int32_t i = 0; i < n; i++) {
            require(tokens[i] >= 0 && tokens[i] < n_vocab, "token id out of range");
            const int32_t k = n_seq_id ? n_seq_id[i] : 1;
            require(k >= 1 && k <= n_seq, "each token needs 1 to n_seq_max sequence ids");
            require(k == 1 || c->kv_unified, "a token in several sequences needs a context with kv_unified");
            n_ids += k;
        }
        require(!n_seq_id || seq_ids, "n_seq_id without seq_ids");
        llama_batch batch = llama_batch_init(n, 0, n_seq);
        std::unique_ptr<llama_batch, void (*)(llama_batch *)> guard(&batch, [](llama_batch * b) { llama_batch_free(*b); });
        // Next position of each sequence when the host gives none: the cache learns of this
        // batch only once it is decoded.
        std::vector<llama_pos> next((size_t) n_seq, -1);
        std::vector<llama_pos> last((size_t) n_seq, -1);
        batch.n_tokens = n;
        int64_t at = 0;
        for (int32_t i = 0; i < n; i++) {
            const int32_t k = n_seq_id ? n_seq_id[i] : 1;
            std::vector<char> seen((size_t) n_seq, 0);
            for (int32_t j = 0; j < k; j++) {
                const int32_t s = seq_ids ? seq_ids[at + j] : 0;
                if (s < 0 || s >= n_seq) {
                    throw wl_error(WL_E_ARG, "sequence id " + std::to_string(s) + " out of range (n_seq_max=" +
                                                 std::to_string(n_seq) + ")");
                }
                require(!seen[(size_t) s], "a token lists the same sequence twice");
                seen[(size_t) s] = 1;
                batch.seq_id[i][j] = s;
            }
            batch.n_seq_id[i] = k;
            const llama_seq_id s0 = batch.seq_id[i][0];
            if (next[(size_t) s0] < 0) next[(size_t) s0] = next_pos(c->ctx, s0);
            batch.token[i]  = tokens[i];
            require(!pos || pos[i] >= 0, "positions must not be negative");
            batch.pos[i]    = pos ? pos[i] : next[(size_t) s0];
            batch.logits[i] = outputs ? (outputs[i] != 0) : (i == n - 1);
            for (int32_t j = 0; j < k; j++) {
                const llama_seq_id s = batch.seq_id[i][j];
                next[(size_t) s] = batch.pos[i] + 1;
                last[(size_t) s] = std::max(last[(size_t) s], batch.pos[i]);
            }
            at += k;
        }
        (void) n_ids;
        for (int32_t s = 0; s < n_seq; s++) {  // "full" is judged per sequence
            if (last[(size_t) s] >= n_ctx_seq) {
                throw wl_error(WL_E_CTX_FULL, "sequence " + std::to_string(s) + " is full: position " +
                                                  std::to_string(last[(size_t) s]) + " does not fit in its " +
                                                  std::to_string(n_ctx_seq) + " cells");
            }
        }
        decode_checked(*c, batch);
        return c->n_outputs;
    });
}

WL_EXPORT(wl_context_logits) int32_t wl_context_logits(int32_t ctx, int32_t idx, float * out, int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (out || cap == 0), "invalid output buffer");
        auto c = lookup(reg().contexts, ctx, "context");
        require_output(*c, idx);
        const int32_t n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(c->model));
        const float * l = llama_get_logits_ith(c->ctx, idx);
        if (!l) throw wl_error(WL_E_ARG, "no logits for output " + std::to_string(idx) + " of the last decode");
        if (out) memcpy(out, l, sizeof(float) * (size_t) std::min(cap, n_vocab));
        return n_vocab;
    });
}

WL_EXPORT(wl_context_embeddings_seq) int32_t wl_context_embeddings_seq(int32_t ctx, int32_t seq, float * out,
                                                                     int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (out || cap == 0), "invalid output buffer");
        auto c = context_seq(ctx, seq);
        require(c->embeddings, "the context was not created with embeddings");
        const enum llama_pooling_type pooling = llama_pooling_type(c->ctx);
        require(pooling != LLAMA_POOLING_TYPE_NONE, "the context does not pool (pooling none): read each token's embedding");
        const float * e = c->n_outputs > 0 ? llama_get_embeddings_seq(c->ctx, seq) : nullptr;
        if (!e) throw wl_error(WL_E_ARG, "sequence " + std::to_string(seq) + " had no tokens in the last decode");
        const int32_t n = pooling == LLAMA_POOLING_TYPE_RANK ? (int32_t) llama_model_n_cls_out(c->model)
                                                             : llama_model_n_embd_out(c->model);
        if (out) memcpy(out, e, sizeof(float) * (size_t) std::min(cap, n));
        return n;
    });
}

WL_EXPORT(wl_context_embeddings_token) int32_t wl_context_embeddings_token(int32_t ctx, int32_t idx, float * out,
                                                                         int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (out || cap == 0), "invalid output buffer");
        auto c = lookup(reg().contexts, ctx, "context");
        require(c->embeddings, "the context was not created with embeddings");
        require_output(*c, idx);
        const float * e = llama_get_embeddings_ith(c->ctx, idx);
        if (!e) throw wl_error(WL_E_ARG, "no embedding for output " + std::to_string(idx) + " of the last decode");
        const int32_t n = llama_model_n_embd_out(c->model);
        if (out) memcpy(out, e, sizeof(float) * (size_t) std::min(cap, n));
        return n;
    });
}

WL_EXPORT(wl_state_seq_get) int32_t wl_state_seq_get(int32_t ctx, int32_t seq, uint8_t * buf, int32_t cap) {
    return guarded([&] {
        require(cap >= 0 && (buf || cap == 0), "invalid output buffer");
        auto c = context_seq(ctx, seq);
        const size_t n = llama_state_seq_get_size(c->ctx, seq);
        if (n > (size_t) INT32_MAX) throw wl_error(WL_E_UNSUPPORTED, "the sequence's state is over 2 GiB");
        if (buf && (size_t) cap >= n) {
            if (llama_state_seq_get_data(c->ctx, buf, n, seq) != n) {
                throw wl_error(WL_E_INTERNAL, "llama.cpp wrote a state of another size than it announced");
            }
        }
        return (int32_t) n;
    });
}

WL_EXPORT(wl_state_seq_set) int32_t wl_state_seq_set(int32_t ctx, int32_t seq, const uint8_t * buf, int32_t len) {
    return guarded([&] {
        require(len > 0 && buf != nullptr, "the state is empty");
        auto c = context_seq(ctx, seq);
        t_last_log_error.clear();
        c->forget_outputs();
        if (llama_state_seq_set_data(c->ctx, buf, (size_t) len, seq) == 0) {
            // llama.cpp has cleared the sequence; say why when it logged a reason
            throw wl_error(WL_E_ARG, "the state does not fit this context" +
                                         (t_last_log_error.empty() ? std::string() : ": " + t_last_log_error));
        }
        return 0;
    });
}

WL_EXPORT(wl_memory_clear) int32_t wl_memory_clear(int32_t ctx) {
    return guarded([&] {
        auto c = lookup(reg().contexts, ctx, "context");
        llama_memory_clear(llama_get_memory(c->ctx), true);
        c->forget_outputs();
        return 0;
    });
}

WL_EXPORT(wl_memory_seq_rm) int32_t wl_memory_seq_rm(int32_t ctx, int32_t seq, int32_t p0, int32_t p1) {
    return guarded([&] {
        auto c = context_seq(ctx, seq, true);
        if (!llama_memory_seq_rm(llama_get_memory(c->ctx), seq, p0, p1)) {
            throw wl_error(WL_E_UNSUPPORTED, "this model's memory cannot remove a partial sequence");
        }
        c->forget_outputs();
        return 0;
    });
}

WL_EXPORT(wl_memory_seq_cp) int32_t wl_memory_seq_cp(int32_t ctx, int32_t src, int32_t dst, int32_t p0, int32_t p1) {
    return guarded([&] {
        auto c = lookup(reg().contexts, ctx, "context");
        const int32_t n_seq = (int32_t) llama_n_seq_max(c->ctx);
        require(src >= 0 && src < n_seq && dst >= 0 && dst < n_seq, "sequence id out of range");
        require(src != dst, "copying a sequence onto itself");
        // Sequences live in separate KV streams (kv_unified is off): llama.cpp copies only whole
        // streams between them, and asserts otherwise (which would abort the process).
        require(c->kv_unified || (p0 <= 0 && p1 < 0),
                "sequences are copied whole (p0 = 0, p1 = -1; trim with wl_memory_seq_rm) unless kv_unified");
        llama_memory_seq_cp(llama_get_memory(c->ctx), src, dst, p0, p1);
        return 0;
    });
}

WL_EXPORT(wl_memory_seq_keep) int32_t wl_memory_seq_keep(int32_t ctx, int32_t seq) {
    return guarded([&] {
        auto c = context_seq(ctx, seq);
        llama_memory_seq_keep(llama_get_memory(c->ctx), seq);
        c->forget_outputs();
        return 0;
    });
}

WL_EXPORT(wl_memory_seq_add) int32_t wl_memory_seq_add(int32_t ctx, int32_t seq, int32_t p0, int32_t p1, int32_t delta) {
    return guarded([&] {
        auto c = context_seq(ctx, seq);
        if (!llama_memory_can_shift(llama_get_memory(c->ctx))) {
            throw wl_error(WL_E_UNSUPPORTED, "this model's memory cannot shift positions");
        }
        llama_memory_seq_add(llama_get_memory(c->ctx), seq, p0, p1, delta);
        return 0;
    });
}

WL_EXPORT(wl_memory_seq_pos_range) int32_t wl_memory_seq_pos_range(int32_t ctx, int32_t seq, int32_t * out) {
    return guarded([&] {
        require(out != nullptr, "out needs room for 2 positions");
        llama_memory_t mem = llama_get_memory(context_seq(ctx, seq)->ctx);
        out[0] = (int32_t) llama_memory_seq_pos_min(mem, seq);
        out[1] = (int32_t) llama_memory_seq_pos_max(mem, seq);
        return 0;
    });
}

// ---- samplers --------------------------------------------------------------------------------

WL_EXPORT(wl_sampler_chain_new) int32_t wl_sampler_chain_new(int32_t model) {
    return guarded([&] {
        auto s = std::make_shared<Sampler>();
        s->model = lookup(reg().models, model, "model");
        s->chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
        return insert(reg().samplers, s);
    });
}

WL_EXPORT(wl_sampler_chain_add) int32_t wl_sampler_chain_add(int32_t sampler, int32_t type, const float * f, int32_t nf,
                                                             const int32_t * iv, int32_t ni, const char * text,
                                                             int32_t text_len) {
    return guarded([&] {
        auto s = lookup(reg().samplers, sampler, "sampler");
        require(nf >= 0 && (f || nf == 0) && ni >= 0 && (iv || ni == 0) && text_len >= 0 && (text || text_len == 0),
                "invalid parameter buffers");
        const llama_vocab * vocab = s->model->vocab();
        const int32_t n_vocab = llama_vocab_n_tokens(vocab);
        auto need = [&](int32_t want_f, int32_t want_i) {
            if (nf != want_f || ni != want_i) {
                throw wl_error(WL_E_ARG, "sampler type " + std::to_string(type) + " takes " + std::to_string(want_f) +
                                             " floats and " + std::to_string(want_i) + " ints");
            }
        };
        const std::string str(text ? text : "", (size_t) text_len);
        llama_sampler * x = nullptr;
        switch (type) {
            case WL_SAMPLER_GREEDY:  need(0, 0); x = llama_sampler_init_greedy(); break;
            case WL_SAMPLER_DIST:    need(0, 1); x = llama_sampler_init_dist((uint32_t) iv[0]); break;
            case WL_SAMPLER_TEMP:    need(1, 0); x = llama_sampler_init_temp(f[0]); break;
            case WL_SAMPLER_TEMP_EXT: need(3, 0); x = llama_sampler_init_temp_ext(f[0], f[1], f[2]); break;
            case WL_SAMPLER_TOP_K:   need(0, 1); x = llama_sampler_init_top_k(iv[0]); break;
            case WL_SAMPLER_TOP_P:   need(1, 1); x = llama_sampler_init_top_p(f[0], (size_t) std::max(iv[0], 1)); break;
            case WL_SAMPLER_MIN_P:   need(1, 1); x = llama_sampler_init_min_p(f[0], (size_t) std::max(iv[0], 1)); break;
            case WL_SAMPLER_TYPICAL: need(1, 1); x = llama_sampler_init_typical(f[0], (size_t) std::max(iv[0], 1)); break;
            case WL_SAMPLER_PENALTIES:
                need(3, 1);
                require(iv[0] >= 0, "penalty_last_n must not be negative");
                x = llama_sampler_init_penalties(n_vocab, iv[0], f[0], f[1], f[2]);
                break;
            case WL_SAMPLER_DRY: {
                need(2, 2);  // multiplier, base; allowed_length, penalty_last_n; text: breakers, NUL-separated
                require(iv[0] >= 0 && iv[1] >= 0, "DRY allowed_length and penalty_last_n must not be negative");
                std::vector<std::string> breakers;
                for (size_t a = 0; a < str.size();) {
                    size_t b = str.find('\0', a);
                    if (b == std::string::npos) b = str.size();
                    if (b > a) breakers.push_back(str.substr(a, b - a));
                    a = b + 1;
                }
                std::vector<const char *> ptrs;
                for (auto & b : breakers) ptrs.push_back(b.c_str());
                x = llama_sampler_init_dry(vocab, f[0], f[1], iv[0], iv[1], ptrs.data(), ptrs.size());
                break;
            }
            case WL_SAMPLER_XTC:
                need(2, 2);
                x = llama_sampler_init_xtc(f[0], f[1], (size_t) std::max(iv[0], 1), (uint32_t) iv[1]);
                break;
            case WL_SAMPLER_MIROSTAT:
                need(2, 2);  // tau, eta; seed, m
                x = llama_sampler_init_mirostat(n_vocab, (uint32_t) iv[0], f[0], f[1], iv[1]);
                break;
            case WL_SAMPLER_MIROSTAT_V2:
                need(2, 1);
                x = llama_sampler_init_mirostat_v2((uint32_t) iv[0], f[0], f[1]);
                break;
            case WL_SAMPLER_LOGIT_BIAS: {
                require(nf == ni, "logit bias takes one float per token id");
                std::vector<llama_logit_bias> bias((size_t) ni);
                for (int32_t k = 0; k < ni; k++) {
                    require(iv[k] >= 0 && iv[k] < n_vocab, "logit bias: token id out of range");
                    bias[(size_t) k] = {iv[k], f[k]};
                }
                x = llama_sampler_init_logit_bias(n_vocab, ni, bias.data());
                break;
            }
            case WL_SAMPLER_GRAMMAR:
            case WL_SAMPLER_GRAMMAR_LAZY: {
                // text: the GBNF grammar, NUL, the root rule[, NUL, a trigger pattern]... (lazy only)
                require(nf == 0, "a grammar takes no floats");
                require(s->grammar == nullptr, "a sampler chain takes one grammar");
                std::vector<std::string> parts;
                for (size_t a = 0;;) {
                    const size_t b = str.find('\0', a);
                    parts.push_back(str.substr(a, b == std::string::npos ? std::string::npos : b - a));
                    if (b == std::string::npos) break;
                    a = b + 1;
                }
                const std::string & grammar = parts[0];
                const std::string root = parts.size() > 1 && !parts[1].empty() ? parts[1] : "root";
                for (int32_t k = 0; k < ni; k++) require(iv[k] >= 0 && iv[k] < n_vocab, "grammar: token id out of range");
                t_last_log_error.clear();
                if (type == WL_SAMPLER_GRAMMAR) {
                    require(parts.size() <= 2, "a grammar takes no trigger patterns (WL_SAMPLER_GRAMMAR_LAZY does)");
                    x = llama_sampler_init_grammar(vocab, grammar.c_str(), root.c_str());
                } else {
                    std::vector<const char *> patterns;
                    for (size_t k = 2; k < parts.size(); k++) patterns.push_back(parts[k].c_str());
                    require(!patterns.empty() || ni > 0, "a lazy grammar needs a trigger pattern or token");
                    x = llama_sampler_init_grammar_lazy_patterns(vocab, grammar.c_str(), root.c_str(), patterns.data(),
                                                                 patterns.size(), iv, (size_t) ni);
                }
                if (!x) {
                    throw wl_error(WL_E_ARG, "the grammar does not parse" +
                                                 (t_last_log_error.empty() ? std::string() : ": " + t_last_log_error));
                }
                if (type == WL_SAMPLER_GRAMMAR) {
                    try {  // the tokens the grammar has already seen (a generation prompt it covers)
                        for (int32_t k = 0; k < ni; k++) llama_sampler_accept(x, iv[k]);
                    } catch (const std::exception & e) {
                        llama_sampler_free(x);
                        throw wl_error(WL_E_ARG, std::string("the grammar does not accept its prefill: ") + e.what());
                    }
                }
                break;
            }
            default: throw wl_error(WL_E_ARG, "unknown sampler type " + std::to_string(type));
        }
        if (!x) throw wl_error(WL_E_INTERNAL, "llama.cpp could not make sampler type " + std::to_string(type));
        if (type == WL_SAMPLER_GRAMMAR || type == WL_SAMPLER_GRAMMAR_LAZY) {
            s->grammar = x;
        } else {
            llama_sampler_chain_add(s->chain, x);
            s->ends_with_selector = type == WL_SAMPLER_GREEDY || type == WL_SAMPLER_DIST ||
                                    type == WL_SAMPLER_MIROSTAT || type == WL_SAMPLER_MIROSTAT_V2;
        }
        return llama_sampler_chain_n(s->chain) + (s->grammar ? 1 : 0);
    });
}

WL_EXPORT(wl_sampler_sample) int32_t wl_sampler_sample(int32_t sampler, int32_t ctx, int32_t idx) {
    return guarded([&] {
        auto s = lookup(reg().samplers, sampler, "sampler");
        auto c = lookup(reg().contexts, ctx, "context");
        require_output(*c, idx);
        check_can_sample(*s, *c);
        return (int32_t) sample_token(*s, c->ctx, idx);
    });
}

WL_EXPORT(wl_sampler_free) int32_t wl_sampler_free(int32_t sampler) { return erase(reg().samplers, sampler); }

WL_EXPORT(wl_sampler_reset) int32_t wl_sampler_reset(int32_t sampler) {
    return guarded([&] {
        auto s = lookup(reg().samplers, sampler, "sampler");
        llama_sampler_reset(s->chain);
        if (s->grammar) llama_sampler_reset(s->grammar);
        return 0;
    });
}

WL_EXPORT(wl_sampler_accept) int32_t wl_sampler_accept(int32_t sampler, const int32_t * tokens, int32_t n) {
    return guarded([&] {
        require(n >= 0 && (tokens || n == 0), "invalid token buffer");
        auto s = lookup(reg().samplers, sampler, "sampler");
        const llama_vocab * vocab = s->model->vocab();
        const int32_t n_vocab = llama_vocab_n_tokens(vocab);
        for (int32_t i = 0; i < n; i++) require(tokens[i] >= 0 && tokens[i] < n_vocab, "token id out of range");
        // History is for penalties and DRY; a grammar only advances with the tokens it constrains.
        for (int32_t i = 0; i < n; i++) llama_sampler_accept(s->chain, tokens[i]);
        return 0;
    });
}

WL_EXPORT(wl_context_generate) int32_t wl_context_generate(int32_t ctx, int32_t n, const int32_t * seqs, const int32_t * samplers,
                                                       const int32_t * pending, const int32_t * max_tokens, int32_t stride,
                                                       int32_t * out, int32_t * n_out, int32_t * stop, float * logprobs,
                                                       int32_t n_top, int32_t * top_tokens, float * top_logprobs) {
    return guarded([&] {
        require(n > 0 && seqs && samplers && pending && max_tokens && out && n_out && stop, "invalid arguments");
        require(n_top >= 0 && n_top <= WL_TOP_LOGPROBS_MAX, "n_top must be in [0, WL_TOP_LOGPROBS_MAX]");
        require(n_top == 0 || (logprobs && top_tokens && top_logprobs), "n_top > 0 needs logprobs, top_tokens and top_logprobs");
        auto c = lookup(reg().contexts, ctx, "context");
        const int32_t n_seq = (int32_t) llama_n_seq_max(c->ctx);
        require(n <= n_seq, "more sequences than the context's n_seq_max");
        require(n <= (int32_t) llama_n_batch(c->ctx), "more sequences than the context's n_batch");
        const llama_vocab * vocab = llama_model_get_vocab(c->model);
        const int32_t n_vocab = llama_vocab_n_tokens(vocab);
        const llama_pos n_ctx_seq = (llama_pos) llama_n_ctx_seq(c->ctx);
        std::vector<std::shared_ptr<Sampler>> chains((size_t) n);
        std::vector<char> seen((size_t) n_seq, 0);
        for (int32_t i = 0; i < n; i++) {
            require(seqs[i] >= 0 && seqs[i] < n_seq, "sequence id out of range");
            require(!seen[(size_t) seqs[i]], "a sequence appears twice");
            seen[(size_t) seqs[i]] = 1;
            require(pending[i] >= 0 && pending[i] < n_vocab, "pending token id out of range");
            require(max_tokens[i] >= 0 && max_tokens[i] <= stride, "max_tokens must be in [0, stride]");
            chains[(size_t) i] = lookup(reg().samplers, samplers[i], "sampler");
            check_can_sample(*chains[(size_t) i], *c);
            n_out[i] = 0;
            stop[i] = WL_STOP_LENGTH;
        }
        // Per step: one token per active sequence, at its next position, with an output.
        std::vector<llama_token> tok((size_t) n);
        std::vector<llama_pos> pos((size_t) n);
        std::vector<int32_t> n_ids((size_t) n, 1);
        std::vector<llama_seq_id> ids((size_t) n);
        std::vector<llama_seq_id *> id_ptrs((size_t) n);
        std::vector<int8_t> outs((size_t) n, 1);
        std::vector<int32_t> active;  // indices i still generating
        for (int32_t i = 0; i < n; i++) {
            if (max_tokens[i] > 0) active.push_back(i);
        }
        std::vector<llama_token> next(pending, pending + n);
        std::vector<float> lp_scratch;
        int32_t steps = 0;
        while (!active.empty()) {
            int32_t m = 0;
            std::vector<int32_t> batched;
            for (int32_t i : active) {
                const llama_pos p = next_pos(c->ctx, seqs[i]);
                if (p >= n_ctx_seq) {  // judged per sequence: the others go on
                    stop[i] = WL_STOP_CTX_FULL;
                    continue;
                }
                tok[(size_t) m] = next[(size_t) i];
                pos[(size_t) m] = p;
                ids[(size_t) m] = seqs[i];
                id_ptrs[(size_t) m] = &ids[(size_t) m];
                batched.push_back(i);
                m++;
            }
            if (m == 0) break;
            llama_batch b = {m, tok.data(), nullptr, pos.data(), n_ids.data(), id_ptrs.data(), outs.data()};
            decode_checked(*c, b);  // throws: the host keeps what was written so far
            steps++;
            active.clear();
            for (int32_t k = 0; k < m; k++) {
                const int32_t i = batched[(size_t) k];
                const llama_token t = sample_token(*chains[(size_t) i], c->ctx, k);
                if (llama_vocab_is_eog(vocab, t)) {
                    stop[i] = WL_STOP_EOG;
                    continue;
                }
                const size_t at = (size_t) i * (size_t) stride + (size_t) n_out[i];
                out[at] = t;
                if (logprobs) {
                    log_probs(llama_get_logits_ith(c->ctx, k), n_vocab, t, n_top, logprobs + at,
                              top_tokens + at * (size_t) n_top, top_logprobs + at * (size_t) n_top, lp_scratch);
                }
                n_out[i]++;
                next[(size_t) i] = t;
                if (n_out[i] < max_tokens[i]) active.push_back(i);
            }
        }
        return steps;
    });
}

}  // extern "C"
