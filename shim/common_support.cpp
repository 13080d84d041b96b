// What the common/ files in shim/common_sources.txt call from llama.cpp's common/common.cpp and
// common/log.cpp, which themselves bring the filesystem, threads and the downloader into the
// sandbox: the string helpers, common_tokenize and common_token_to_piece copied verbatim from the pinned llama.cpp
// (MIT licence), and a logger that hands common/'s LOG_* lines to llama.cpp's log callback (the
// host's logger `wasillama.llama`) instead of a worker thread writing to stderr.
#include "common.h"
#include "log.h"

#include <cstdarg>
#include <cstdio>
#include <limits>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

// common/ checks this before formatting a line: debug lines (LOG_DBG, verbosity 1) are dropped
// unformatted, everything up to info reaches the host, which filters by level itself.
int common_log_get_verbosity_thold(void) { return LOG_LEVEL_INFO; }

// One logger, no state: the lines go through llama.cpp's callback as they come.
struct common_log * common_log_main() { return nullptr; }

void common_log_add(struct common_log *, enum ggml_log_level level, const char * fmt, ...) {
    ggml_log_callback cb = nullptr;
    void * user_data = nullptr;
    llama_log_get(&cb, &user_data);
    if (!cb) return;
    char small[512];
    va_list args;
    va_start(args, fmt);
    va_list copy;
    va_copy(copy, args);
    const int n = vsnprintf(small, sizeof(small), fmt, args);
    va_end(args);
    if (n < 0) {
        va_end(copy);
        return;
    }
    if ((size_t) n < sizeof(small)) {
        cb(level, small, user_data);
    } else {
        std::string big((size_t) n + 1, '\0');
        vsnprintf(big.data(), big.size(), fmt, copy);
        cb(level, big.c_str(), user_data);
    }
    va_end(copy);
}

std::string common_token_to_piece(const struct llama_vocab * vocab, llama_token token, bool special) {
    std::string piece;
    piece.resize(piece.capacity());  // using string internal cache, 15 bytes + '\n'
    const int n_chars = llama_token_to_piece(vocab, token, &piece[0], piece.size(), 0, special);
    if (n_chars < 0) {
        piece.resize(-n_chars);
        int check = llama_token_to_piece(vocab, token, &piece[0], piece.size(), 0, special);
        GGML_ASSERT(check == -n_chars);
    }
    else {
        piece.resize(n_chars);
    }

    return piece;
}

std::string string_join(const std::vector<std::string> & values, const std::string & separator) {
    std::ostringstream result;
    for (size_t i = 0; i < values.size(); ++i) {
        if (i > 0) {
            result << separator;
        }
        result << values[i];
    }
    return result.str();
}

std::vector<std::string> string_split(const std::string & str, const std::string & delimiter) {
    std::vector<std::string> parts;
    size_t start = 0;
    size_t end = str.find(delimiter);

    while (end != std::string::npos) {
        parts.push_back(str.substr(start, end - start));
        start = end + delimiter.length();
        end = str.find(delimiter, start);
    }

    parts.push_back(str.substr(start));

    return parts;
}

std::string string_repeat(const std::string & str, size_t n) {
    if (n == 0) {
        return "";
    }

    std::string result;
    result.reserve(str.length() * n);

    for (size_t i = 0; i < n; ++i) {
        result += str;
    }

    return result;
}

void string_replace_all(std::string & s, const std::string & search, const std::string & replace) {
    if (search.empty()) {
        return;
    }
    std::string builder;
    builder.reserve(s.length());
    size_t pos = 0;
    size_t last_pos = 0;
    while ((pos = s.find(search, last_pos)) != std::string::npos) {
        builder.append(s, last_pos, pos - last_pos);
        builder.append(replace);
        last_pos = pos + search.length();
    }
    builder.append(s, last_pos, std::string::npos);
    s = std::move(builder);
}

std::string regex_escape(const std::string & s) {
    static const std::regex special_chars("[.^$|()*+?\\[\\]{}\\\\]");
    return std::regex_replace(s, special_chars, "\\$&");
}

std::vector<llama_token> common_tokenize(
    const struct llama_vocab * vocab,
           const std::string & text,
                        bool   add_special,
                        bool   parse_special) {
    // upper limit for the number of tokens
    int n_tokens = text.length() + 2 * add_special;
    std::vector<llama_token> result(n_tokens);
    n_tokens = llama_tokenize(vocab, text.data(), text.length(), result.data(), result.size(), add_special, parse_special);
    if (n_tokens == std::numeric_limits<int32_t>::min()) {
        throw std::runtime_error("Tokenization failed: input text too large, tokenization result exceeds int32_t limit");
    }
    if (n_tokens < 0) {
        result.resize(-n_tokens);
        int check = llama_tokenize(vocab, text.data(), text.length(), result.data(), result.size(), add_special, parse_special);
        GGML_ASSERT(check == -n_tokens);
    } else {
        result.resize(n_tokens);
    }
    return result;
}
