/*
 * Force-included into every wasm32-wasi translation unit (wasm/build.sh).
 *
 * Debian's wasi-libc has no threads and its libc++ is built without thread support, yet
 * llama.cpp names std::mutex, std::thread and friends in code that, inside a single-threaded
 * guest, only ever runs on one thread. The guest is single-threaded, so:
 *   - mutexes are no-ops (nothing can contend);
 *   - std::thread runs its function inline, at construction; join() is a no-op;
 *   - std::async runs synchronously and returns a ready future;
 *   - std::ofstream always fails to open (the guest has no filesystem).
 * Nothing here is used for real parallelism; guest threads are a separate, later design.
 */
#ifndef WASILLAMA_WASI_COMPAT_H
#define WASILLAMA_WASI_COMPAT_H

#ifdef __cplusplus
#include <chrono>
#include <exception>
#include <functional>
#include <iosfwd>
#include <mutex>
#include <ostream>
#include <string>
#include <optional>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

namespace std {

class mutex {
public:
    constexpr mutex() noexcept = default;
    mutex(const mutex &) = delete;
    mutex & operator=(const mutex &) = delete;
    void lock() {}
    bool try_lock() { return true; }
    void unlock() {}
};

class recursive_mutex : public mutex {};
class timed_mutex : public mutex {};
class shared_mutex : public mutex {
public:
    void lock_shared() {}
    bool try_lock_shared() { return true; }
    void unlock_shared() {}
};

enum class cv_status { no_timeout, timeout };

class condition_variable {
public:
    void notify_one() noexcept {}
    void notify_all() noexcept {}
    template <class Lock> void wait(Lock &) { std::terminate(); }  // would block forever
    template <class Lock, class Pred> void wait(Lock &, Pred pred) {
        if (!pred()) std::terminate();  // nobody else could ever make pred true
    }
    template <class Lock, class Rep, class Period, class Pred>
    bool wait_for(Lock &, const chrono::duration<Rep, Period> &, Pred pred) { return pred(); }
};
using condition_variable_any = condition_variable;

class thread {
public:
    class id {
    public:
        bool operator==(const id &) const { return true; }
        bool operator!=(const id &) const { return false; }
    };
    thread() noexcept = default;
    template <class F, class... Args>
    explicit thread(F && f, Args &&... args) {
        std::invoke(std::forward<F>(f), std::forward<Args>(args)...);
        joinable_ = true;
    }
    thread(thread && o) noexcept : joinable_(o.joinable_) { o.joinable_ = false; }
    thread & operator=(thread && o) noexcept { joinable_ = o.joinable_; o.joinable_ = false; return *this; }
    bool joinable() const noexcept { return joinable_; }
    void join() { joinable_ = false; }
    void detach() { joinable_ = false; }
    id get_id() const noexcept { return id(); }
    static unsigned hardware_concurrency() noexcept { return 1; }
private:
    bool joinable_ = false;
};

namespace this_thread {
inline thread::id get_id() noexcept { return thread::id(); }
inline void yield() noexcept {}
template <class Rep, class Period> void sleep_for(const chrono::duration<Rep, Period> &) {}
}  // namespace this_thread

enum class launch { async = 1, deferred = 2 };
enum class future_status { ready, timeout, deferred };

template <class T> class future {
public:
    future() = default;
    explicit future(std::function<T()> f) {
        try { value_.emplace(f()); } catch (...) { error_ = std::current_exception(); }
    }
    bool valid() const { return value_.has_value() || error_ != nullptr; }
    T get() {
        if (error_) std::rethrow_exception(error_);
        return std::move(*value_);
    }
    void wait() const {}
    template <class Rep, class Period>
    future_status wait_for(const chrono::duration<Rep, Period> &) const { return future_status::ready; }
private:
    std::optional<T> value_;
    std::exception_ptr error_;
};

template <> class future<void> {
public:
    future() = default;
    explicit future(std::function<void()> f) {
        try { f(); valid_ = true; } catch (...) { error_ = std::current_exception(); }
    }
    bool valid() const { return valid_ || error_ != nullptr; }
    void get() { if (error_) std::rethrow_exception(error_); }
    void wait() const {}
    template <class Rep, class Period>
    future_status wait_for(const chrono::duration<Rep, Period> &) const { return future_status::ready; }
private:
    bool valid_ = false;
    std::exception_ptr error_;
};

template <class F, class... Args>
auto async(launch, F && f, Args &&... args) -> future<std::invoke_result_t<std::decay_t<F>, std::decay_t<Args>...>> {
    using R = std::invoke_result_t<std::decay_t<F>, std::decay_t<Args>...>;
    auto bound = std::bind(std::forward<F>(f), std::forward<Args>(args)...);
    return future<R>(std::function<R()>(bound));
}
template <class F, class... Args>
auto async(F && f, Args &&... args) {
    return std::async(launch::async, std::forward<F>(f), std::forward<Args>(args)...);
}

// libc++ without a filesystem declares std::ofstream but never defines it. The guest has no
// files to write (llama_model_quantize is the only user), so every ofstream fails to open,
// and a stream that asked for exceptions throws on first use.
template <> class basic_ofstream<char> : public basic_ostream<char> {
public:
    basic_ofstream() : basic_ostream<char>(nullptr) { setstate(ios_base::badbit | ios_base::failbit); }
    explicit basic_ofstream(const string &, ios_base::openmode = ios_base::out) : basic_ofstream() {}
    explicit basic_ofstream(const char *, ios_base::openmode = ios_base::out) : basic_ofstream() {}
    basic_ofstream(basic_ofstream && o) : basic_ostream<char>(std::move(o)) {}
    basic_ofstream & operator=(basic_ofstream && o) {
        basic_ostream<char>::operator=(std::move(o));
        return *this;
    }
    bool is_open() const { return false; }
    void close() {}
};

}  // namespace std
#endif /* __cplusplus */

#endif /* WASILLAMA_WASI_COMPAT_H */
