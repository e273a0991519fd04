/*
 * XRENAME_LOG: one JSON object per line for every EXDEV that xrename
 * handled, to a file or to stderr; nothing ever on stdout.
 */
#include "common.h"

/* ------------------------------------------------------------------ */
/* A minimal parser for one flat JSON object per line                  */

struct jfield {
    char key[64];
    char type; /* 's' string, 'n' number, 'b' true/false, 'z' null */
    char val[4096];
};

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t' || *p == '\r')
        p++;
    return p;
}

/* Parses a JSON string at p (at the opening quote) into out; NULL on error. */
static const char *parse_string(const char *p, char *out, size_t cap)
{
    if (*p++ != '"')
        return NULL;
    size_t n = 0;
    while (*p && *p != '"') {
        char c = *p++;
        if ((unsigned char)c < 0x20)
            return NULL; /* raw control character (e.g. newline) in a string */
        if (c == '\\') {
            c = *p++;
            switch (c) {
            case '"': case '\\': case '/': break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *p++;
                    v <<= 4;
                    if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
                    else return NULL;
                }
                c = v < 0x80 ? (char)v : '?';
                break;
            }
            default:
                return NULL;
            }
        }
        if (n + 1 < cap)
            out[n++] = c;
    }
    if (*p != '"')
        return NULL;
    out[n] = 0;
    return p + 1;
}

/* Parses `line` (without its newline); returns the number of fields or -1. */
static int parse_object(const char *line, struct jfield *f, int max, const char **err)
{
    const char *p = skip_ws(line);
    int n = 0;
    *err = "expected '{'";
    if (*p++ != '{')
        return -1;
    p = skip_ws(p);
    if (*p == '}')
        return skip_ws(p + 1)[0] ? (*err = "text after the object", -1) : 0;
    for (;;) {
        if (n == max)
            return *err = "too many keys", -1;
        *err = "bad key";
        p = parse_string(skip_ws(p), f[n].key, sizeof f[n].key);
        if (!p)
            return -1;
        p = skip_ws(p);
        *err = "expected ':'";
        if (*p++ != ':')
            return -1;
        p = skip_ws(p);
        *err = "bad value";
        if (*p == '"') {
            f[n].type = 's';
            p = parse_string(p, f[n].val, sizeof f[n].val);
            if (!p)
                return -1;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            const char *q = p;
            if (*q == '-')
                q++;
            if (!(*q >= '0' && *q <= '9'))
                return -1;
            while ((*q >= '0' && *q <= '9') || *q == '.' || *q == 'e' || *q == 'E' ||
                   *q == '+' || *q == '-')
                q++;
            f[n].type = 'n';
            snprintf(f[n].val, sizeof f[n].val, "%.*s", (int)(q - p), p);
            char *end;
            strtod(f[n].val, &end);
            if (*end)
                return -1;
            p = q;
        } else if (strncmp(p, "true", 4) == 0 || strncmp(p, "false", 5) == 0) {
            f[n].type = 'b';
            p += *p == 't' ? 4 : 5;
        } else if (strncmp(p, "null", 4) == 0) {
            f[n].type = 'z';
            p += 4;
        } else {
            *err = "unsupported value (nested object/array?)";
            return -1;
        }
        n++;
        p = skip_ws(p);
        if (*p == ',') {
            p++;
            continue;
        }
        *err = "expected ',' or '}'";
        if (*p++ != '}')
            return -1;
        *err = "text after the object";
        return *skip_ws(p) ? -1 : n;
    }
}

static const struct jfield *field(const struct jfield *f, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(f[i].key, key) == 0)
            return &f[i];
    return NULL;
}

struct expect {
    const char *op, *src, *dst, *result;
    long long bytes; /* -1: any count up to max_bytes (failed move) */
    pid_t pid;
    long long max_bytes;
};

/* One log line must be a JSON object describing the expected move. */
static void check_line(const char *line, const struct expect *e, const char *what)
{
    struct jfield f[32];
    const char *err;
    int n = parse_object(line, f, 32, &err);
    CHECK(n >= 0, "%s: log line is not a flat JSON object (%s): %s", what, err, line);
    static const char *const keys[] = {"time", "pid", "program", "op", "src", "dst",
                                       "type", "bytes", "files", "ms", "result"};
    for (int i = 0; i < 11; i++)
        CHECK(field(f, n, keys[i]), "%s: log line has no key \"%s\": %s", what, keys[i],
              line);
    const struct jfield *v;
    v = field(f, n, "time");
    CHECK((v->type == 's' && v->val[0]) || (v->type == 'n' && strtod(v->val, NULL) > 0),
          "%s: \"time\" is empty or not a string/number: %s", what, line);
#define EXPECT_STR(key, want)                                                  \
    v = field(f, n, key);                                                      \
    CHECK(v->type == 's' && strcmp(v->val, (want)) == 0,                       \
          "%s: \"%s\" should be the string \"%s\": %s", what, key, (want), line)
#define EXPECT_NUM(key, want)                                                  \
    v = field(f, n, key);                                                      \
    CHECK(v->type == 'n' && strtoll(v->val, NULL, 10) == (want) &&             \
              !strpbrk(v->val, ".eE"),                                         \
          "%s: \"%s\" should be the number %lld: %s", what, key,               \
          (long long)(want), line)
    EXPECT_NUM("pid", e->pid);
    EXPECT_STR("op", e->op);
    EXPECT_STR("src", e->src);
    EXPECT_STR("dst", e->dst);
    EXPECT_STR("type", "file");
    if (e->bytes >= 0) {
        EXPECT_NUM("bytes", e->bytes);
        EXPECT_NUM("files", 1);
    } else {
        /* a failed move: how far it got (bytes, files done) is not specified */
        v = field(f, n, "bytes");
        CHECK(v->type == 'n' && !strpbrk(v->val, ".eE") && strtoll(v->val, NULL, 10) >= 0 &&
                  strtoll(v->val, NULL, 10) <= e->max_bytes,
              "%s: \"bytes\" should be a count from 0 to %lld: %s", what, e->max_bytes,
              line);
        v = field(f, n, "files");
        CHECK(v->type == 'n' && (strcmp(v->val, "0") == 0 || strcmp(v->val, "1") == 0),
              "%s: \"files\" should be 0 or 1: %s", what, line);
    }
    EXPECT_STR("result", e->result);
    v = field(f, n, "program");
    CHECK(v->type == 's' && strstr(v->val, "logging"),
          "%s: \"program\" should name the program (logging): %s", what, line);
    v = field(f, n, "ms");
    CHECK(v->type == 'n' && strtod(v->val, NULL) >= 0,
          "%s: \"ms\" should be a non-negative number: %s", what, line);
}

/* Splits a file into lines; each must end with '\n'.  Returns the count. */
static int read_lines(const char *path, char **lines, int max, const char *what)
{
    size_t len;
    char *text = (char *)read_file(path, &len);
    CHECK(strlen(text) == len, "%s: %s contains NUL bytes", what, path);
    CHECK(len == 0 || text[len - 1] == '\n', "%s: %s does not end with a newline:\n%s",
          what, path, text);
    int n = 0;
    for (char *p = text; *p;) {
        char *nl = strchr(p, '\n');
        *nl = 0;
        CHECK(n < max, "%s: more than %d lines in %s", what, max, path);
        lines[n++] = p;
        p = nl + 1;
    }
    return n;
}

static void check_empty_file(const char *path, const char *what)
{
    size_t len;
    char *text = (char *)read_file(path, &len);
    CHECK(len == 0, "%s: the library wrote %zu bytes to stdout: %.200s", what, len, text);
    free(text);
}

/* ------------------------------------------------------------------ */

static void log_file_gets_one_json_line_per_handled_move(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *logf = path_of("%s/%s.log", env_path("XT_WORK"), xt_name);
    char *out = path_of("%s/%s.stdout", env_path("XT_WORK"), xt_name);
    unlink(logf);
    static const long long sizes[] = {1000, 123457, 0};
    for (int i = 0; i < 3; i++)
        write_pattern_file(path_of("%s/a%d", sd, i), (size_t)sizes[i], (uint64_t)i);
    write_str(path_of("%s/same", sd), "same fs");
    char *d0 = path_of("%s/b0", dd), *d1 = path_of("%s/b1", dd), *d2 = path_of("%s/b2", dd);
    char *same_dst = path_of("%s/same2", sd);
    /* sources relative to the child's cwd: logged exactly as passed */
    char *argv[] = {xt_self, "--child", "rename", "a0", d0, "renameat", "a1", d1,
                    "renameat2", "./a2", d2, "rename", "same", same_dst, NULL};
    char *set_env = path_of("XRENAME_LOG=%s", logf);
    const char *set[] = {set_env, NULL};
    pid_t pid;
    int st = spawn(argv, set, NULL, sd, out, NULL, &pid);
    CHECK(st == 0, "child doing 3 cross-device moves and 1 same-fs rename: %s",
          describe_status(st));
    CHECK_DIR(dd, "b0 b1 b2", "moves with XRENAME_LOG set");
    CHECK_DIR(sd, "same2", "moves with XRENAME_LOG set");
    check_empty_file(out, "XRENAME_LOG=file");
    CHECK(exists(logf), "XRENAME_LOG=%s: the log file was not created", logf);
    char *lines[16];
    int n = read_lines(logf, lines, 16, "log file");
    CHECK(n == 3, "log file has %d lines, expected 3 (one per handled EXDEV, none "
                  "for the same-fs rename)", n);
    const struct expect want[] = {
        {"rename", "a0", d0, "ok", sizes[0], pid, 0},
        {"renameat", "a1", d1, "ok", sizes[1], pid, 0},
        {"renameat2", "./a2", d2, "ok", sizes[2], pid, 0},
    };
    for (int i = 0; i < 3; i++)
        check_line(lines[i], &want[i], path_of("log line %d", i + 1));
}

static void log_records_errno_name_of_failed_move(void)
{
    empty_dir(env_path("XT_SMALL")); /* all of its 1 MiB for this test */
    char *sd = test_dir("XT_EXT4", "");
    char *dd = test_dir("XT_SMALL", "");
    require_kernel_exdev(sd, dd);
    char *logf = path_of("%s/%s.log", env_path("XT_WORK"), xt_name);
    char *out = path_of("%s/%s.stdout", env_path("XT_WORK"), xt_name);
    unlink(logf);
    char *src = path_of("%s/big", sd), *dst = path_of("%s/big", dd);
    write_pattern_file(src, 2u << 20, 1);
    char *argv[] = {xt_self, "--child", "renameat2", src, dst, NULL};
    char *set_env = path_of("XRENAME_LOG=%s", logf);
    const char *set[] = {set_env, NULL};
    pid_t pid;
    int st = spawn(argv, set, NULL, NULL, out, NULL, &pid);
    CHECK(st == ENOSPC, "child moving 2 MiB into a 1 MiB tmpfs: %s, expected ENOSPC",
          describe_status(st));
    check_empty_file(out, "failed move with XRENAME_LOG=file");
    char *lines[16];
    int n = read_lines(logf, lines, 16, "log file");
    CHECK(n == 1, "log file has %d lines, expected 1", n);
    struct expect w = {"renameat2", src, dst, "ENOSPC", -1, pid, 2 << 20};
    check_line(lines[0], &w, "log line of a failed move");
    rm_rf(dd);
}

static void log_to_stderr_writes_the_same_line(void)
{
    char *sd, *dd;
    xdev_dirs("", &sd, &dd);
    char *out = path_of("%s/%s.stdout", env_path("XT_WORK"), xt_name);
    char *err = path_of("%s/%s.stderr", env_path("XT_WORK"), xt_name);
    char *src = path_of("%s/a", sd), *dst = path_of("%s/b", dd);
    write_pattern_file(src, 4321, 2);
    char *argv[] = {xt_self, "--child", "renameat", src, dst, NULL};
    const char *set[] = {"XRENAME_LOG=stderr", NULL};
    pid_t pid;
    int st = spawn(argv, set, NULL, NULL, out, err, &pid);
    CHECK(st == 0, "child: %s", describe_status(st));
    check_empty_file(out, "XRENAME_LOG=stderr");
    char *lines[16];
    int n = read_lines(err, lines, 16, "stderr");
    CHECK(n == 1, "stderr has %d lines, expected exactly the 1 log line", n);
    const struct expect want = {"renameat", src, dst, "ok", 4321, pid, 0};
    check_line(lines[0], &want, "log line on stderr");
}

static void library_never_writes_to_stdout(void)
{
    char *sd = test_dir("XT_EXT4", "");
    char *dd = test_dir("XT_TMPFS", "");
    empty_dir(env_path("XT_SMALL"));
    char *small = test_dir("XT_SMALL", "");
    char *out = path_of("%s/%s.stdout", env_path("XT_WORK"), xt_name);
    write_str(path_of("%s/a", sd), "a");
    write_pattern_file(path_of("%s/big", sd), 2u << 20, 4);
    CHECK(mkdir(path_of("%s/dir", sd), 0755) == 0, "mkdir: %s", strerror(errno));
    /* a success, a failure (ENOSPC), a non-regular source, a same-fs rename */
    char *argv[] = {xt_self, "--child",
                    "rename", path_of("%s/a", sd), path_of("%s/a", dd),
                    "rename", path_of("%s/big", sd), path_of("%s/big", small),
                    "rename", path_of("%s/dir", sd), path_of("%s/dir", dd),
                    "rename", path_of("%s/a", dd), path_of("%s/c", dd),
                    NULL};
    static const char *const logs[] = {NULL, "XRENAME_LOG=stderr", "XRENAME_LOG=/dev/null"};
    const char *unset[] = {"XRENAME_LOG", NULL};
    for (int l = 0; l < 3; l++) {
        const char *set[] = {logs[l], NULL};
        int st = spawn(argv, l ? set : NULL, l ? NULL : unset, NULL, out, "/dev/null", NULL);
        CHECK(st < 1000, "child %s", describe_status(st));
        check_empty_file(out, logs[l] ? logs[l] : "XRENAME_LOG unset");
        /* put things back for the next round */
        if (exists(path_of("%s/c", dd)))
            CHECK(rename(path_of("%s/c", dd), path_of("%s/a", sd)) == 0,
                  "moving back: %s", strerror(errno));
    }
    rm_rf(small);
}

XT_MAIN(TEST(log_file_gets_one_json_line_per_handled_move),
        TEST(log_records_errno_name_of_failed_move),
        TEST(log_to_stderr_writes_the_same_line),
        TEST(library_never_writes_to_stdout))
