/* test_nats_security.c - TLS (client certificates, CA, host name) and NATS authentication (user/password, token,
 * NKey seed file, credentials file) against real nats-server instances configured for each. The test CA is made with
 * openssl at run time in the test's temp dir; NKeys and the operator/account/user JWTs of the credentials file are
 * minted here with OpenSSL's ed25519 (Debian packages no nsc or nk tool). */
#include <openssl/rand.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "itest.h"
#include "nkey.h"

#define CO "secco"

static char dir[256];

/* A CA, a second unrelated CA, a server certificate for localhost/127.0.0.1, one for another host name, and a client
 * certificate, all EC P-256 keys made by the openssl command line. */
static bool make_certs(void)
{
    if (!h_tmpdir(dir, sizeof dir))
        return false;
    char script[3000];
    snprintf(script, sizeof script,
             "set -e; cd '%s'\n"
             "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key "
             "-out $1.pem -days 2 -subj \"/CN=$1\"; }\n"
             "leaf() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $1.key -out $1.csr "
             "-subj \"/CN=$1\"; printf 'subjectAltName=%%s\\nextendedKeyUsage=%%s\\n' \"$2\" \"$3\" > $1.ext; "
             "openssl x509 -req -in $1.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $1.pem -days 2 "
             "-extfile $1.ext; }\n"
             "ca ca; ca otherca\n"
             "leaf server 'DNS:localhost,IP:127.0.0.1' serverAuth\n"
             "leaf wrongname 'DNS:elsewhere.invalid' serverAuth\n"
             "leaf client 'DNS:mes-client' clientAuth\n",
             dir);
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    char *out = NULL;
    int rc = h_run(argv, NULL, 60000, &out);
    if (rc != 0)
        fprintf(stderr, "openssl failed (%d):\n%s\n", rc, out ? out : "");
    free(out);
    return rc == 0;
}

static void need_openssl(void)
{
    if (access("/usr/bin/openssl", X_OK) != 0)
        SKIP("the openssl command is not installed (scripts/install-deps.sh installs it)");
}

static bool tls_server(const char *cert)
{
    char conf[1200];
    snprintf(conf, sizeof conf,
             "tls {\n  cert_file: \"%s/%s.pem\"\n  key_file: \"%s/%s.key\"\n  ca_file: \"%s/ca.pem\"\n"
             "  verify: true\n  timeout: 5\n}\n",
             dir, cert, dir, cert, dir);
    return h_nats_start_conf(&N, 0, conf, H_NATS_WAIT_LOG);
}

/* The service with extra env; returns after it is ready (want_ready) or has exited (its status in *status). */
static bool svc(const char *const *env, bool want_ready, int *status)
{
    if (!h_svc_start(&S, CO, &N, &P, env))
        return false;
    if (want_ready)
        return h_svc_wait_ready(&S, 60000);
    *status = h_svc_wait_exit(&S, 60000);
    return true;
}

static void ready_200(void)
{
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/ready", &body), 200);
    free(body);
}

static bool log_has(const char *needle)
{
    char *log = h_svc_log(&S);
    bool has = log && strstr(log, needle);
    free(log);
    return has;
}

TEST(tls_server_requiring_client_certificates_accepts_the_configured_ca_certificate_and_key)
{
    need_openssl();
    atexit(it_dump_log);
    REQUIRE(make_certs());
    REQUIRE(h_pg_start(&P));
    REQUIRE(tls_server("server"));
    char ca[320], cert[320], key[320];
    snprintf(ca, sizeof ca, "NATS_TLS_CAFILE=%s/ca.pem", dir);
    snprintf(cert, sizeof cert, "NATS_TLS_CERTFILE=%s/client.pem", dir);
    snprintf(key, sizeof key, "NATS_TLS_KEYFILE=%s/client.key", dir);
    const char *env[] = {ca, cert, key, NULL};
    REQUIRE(svc(env, true, NULL));
    ready_200();
    CHECK(log_has("\"tls\":true"));
    CHECK(log_has("\"nats.tls.caFile\":\""));
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

TEST(tls_with_a_wrong_ca_exits_2_naming_nats_tls_ca_file)
{
    need_openssl();
    atexit(it_dump_log);
    REQUIRE(make_certs());
    REQUIRE(h_pg_start(&P));
    REQUIRE(tls_server("server"));
    char ca[320], cert[320], key[320];
    snprintf(ca, sizeof ca, "NATS_TLS_CAFILE=%s/otherca.pem", dir);
    snprintf(cert, sizeof cert, "NATS_TLS_CERTFILE=%s/client.pem", dir);
    snprintf(key, sizeof key, "NATS_TLS_KEYFILE=%s/client.key", dir);
    const char *env[] = {ca, cert, key, NULL};
    int st = -1;
    REQUIRE(svc(env, false, &st));
    CHECK_EQ_INT(st, 2);
    CHECK(log_has("does not verify against nats.tls.caFile"));
    CHECK(log_has("SSL handshake error"));
}

TEST(tls_server_certificate_for_another_host_name_is_refused_with_exit_2)
{
    need_openssl();
    atexit(it_dump_log);
    REQUIRE(make_certs());
    REQUIRE(h_pg_start(&P));
    REQUIRE(tls_server("wrongname"));
    char ca[320], cert[320], key[320];
    snprintf(ca, sizeof ca, "NATS_TLS_CAFILE=%s/ca.pem", dir);
    snprintf(cert, sizeof cert, "NATS_TLS_CERTFILE=%s/client.pem", dir);
    snprintf(key, sizeof key, "NATS_TLS_KEYFILE=%s/client.key", dir);
    const char *env[] = {ca, cert, key, NULL};
    int st = -1;
    REQUIRE(svc(env, false, &st));
    CHECK_EQ_INT(st, 2); /* the right CA signed it, but for elsewhere.invalid: host name verification is on */
    CHECK(log_has("nats.tls.caFile"));
}

TEST(user_and_password_keys_authenticate_and_a_wrong_password_exits_2_without_showing_it)
{
    atexit(it_dump_log);
    REQUIRE(h_pg_start(&P));
    REQUIRE(
        h_nats_start_conf(&N, 0, "authorization {\n  user: svc\n  password: \"Pw-4-nats/x\"\n}\n", H_NATS_WAIT_LOG));
    const char *good[] = {"NATS_USER=svc", "NATS_PASSWORD=Pw-4-nats/x", NULL};
    REQUIRE(svc(good, true, NULL));
    ready_200();
    CHECK(!log_has("Pw-4-nats"));
    CHECK(log_has("\"nats.password\":\"****\""));
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);

    const char *bad[] = {"NATS_USER=svc", "NATS_PASSWORD=Wrong-Pw-77", NULL};
    int st = -1;
    REQUIRE(svc(bad, false, &st));
    CHECK_EQ_INT(st, 2);
    CHECK(log_has("refused the credentials"));
    CHECK(!log_has("Wrong-Pw-77"));
}

TEST(user_and_password_in_the_url_still_authenticate)
{
    atexit(it_dump_log);
    REQUIRE(h_pg_start(&P));
    REQUIRE(h_nats_start_conf(&N, 0, "authorization {\n  user: svc\n  password: \"UrlPw-123\"\n}\n", H_NATS_WAIT_LOG));
    snprintf(N.url, sizeof N.url, "nats://svc:UrlPw-123@127.0.0.1:%d", N.port);
    REQUIRE(svc(NULL, true, NULL));
    ready_200();
    CHECK(!log_has("UrlPw-123"));
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

TEST(token_key_authenticates_and_is_never_logged)
{
    atexit(it_dump_log);
    REQUIRE(h_pg_start(&P));
    REQUIRE(h_nats_start_conf(&N, 0, "authorization {\n  token: \"Tok-9f8e7d6c\"\n}\n", H_NATS_WAIT_LOG));
    const char *env[] = {"NATS_TOKEN=Tok-9f8e7d6c", NULL};
    REQUIRE(svc(env, true, NULL));
    ready_200();
    CHECK(!log_has("Tok-9f8e7d6c"));
    CHECK(log_has("\"nats.token\":\"****\""));
    char *body = NULL;
    CHECK_EQ_INT(h_http(S.http_port, "GET", "/metrics", &body), 200);
    CHECK(body && !strstr(body, "Tok-9f8e7d6c"));
    free(body);
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}

/* A user NKey made here: seed = base32(prefix 'S'+'U', 32 random bytes, CRC-16), public key from the service's own
 * derivation (nkey.c). The server checks the signature the service's nats.c makes with the seed against the public
 * key in its config, so a wrong derivation or encoding fails the connect. */
TEST(nkey_seed_file_authenticates_and_the_seed_is_never_logged)
{
    atexit(it_dump_log);
    unsigned char raw[36];
    raw[0] = (unsigned char)((18u << 3) | (160u >> 5)); /* seed prefix, then the user key type (20 << 3) */
    raw[1] = (unsigned char)((160u & 31) << 3);
    REQUIRE(RAND_bytes(raw + 2, 32) == 1);
    unsigned crc = nkey_crc16(raw, 34);
    raw[34] = (unsigned char)(crc & 0xff);
    raw[35] = (unsigned char)(crc >> 8);
    char seed[80], pub[80], why[160];
    REQUIRE(nkey_base32_encode(raw, sizeof raw, seed, sizeof seed) == 58);
    REQUIRE(strncmp(seed, "SU", 2) == 0);
    REQUIRE(nkey_public_from_seed(seed, pub, sizeof pub, why, sizeof why) == 0);
    REQUIRE(pub[0] == 'U' && strlen(pub) == 56);

    REQUIRE(h_tmpdir(dir, sizeof dir));
    char path[320];
    snprintf(path, sizeof path, "%s/user.nk", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "%s\n", seed);
    fclose(f);
    chmod(path, 0600);

    REQUIRE(h_pg_start(&P));
    char conf[300];
    snprintf(conf, sizeof conf, "authorization {\n  users: [ { nkey: %s } ]\n}\n", pub);
    REQUIRE(h_nats_start_conf(&N, 0, conf, H_NATS_WAIT_LOG));
    char env_seed[340];
    snprintf(env_seed, sizeof env_seed, "NATS_NKEYSEEDFILE=%s", path);
    const char *env[] = {env_seed, NULL};
    REQUIRE(svc(env, true, NULL));
    ready_200();
    CHECK(!log_has(seed));
    CHECK(!log_has(seed + 10)); /* no fragment either */
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);

    /* Another seed: refused, exit 2. */
    REQUIRE(RAND_bytes(raw + 2, 32) == 1);
    crc = nkey_crc16(raw, 34);
    raw[34] = (unsigned char)(crc & 0xff);
    raw[35] = (unsigned char)(crc >> 8);
    REQUIRE(nkey_base32_encode(raw, sizeof raw, seed, sizeof seed) == 58);
    f = fopen(path, "w");
    REQUIRE(f);
    fprintf(f, "%s\n", seed);
    fclose(f);
    int st = -1;
    REQUIRE(svc(env, false, &st));
    CHECK_EQ_INT(st, 2);
    CHECK(log_has("refused the credentials"));
}

/* ---- credentials file: operator/account/user JWTs minted here (ed25519 through OpenSSL, NATS JWT v2 claims) ---- */

#include <openssl/evp.h>

typedef struct {
    unsigned char raw[32]; /* ed25519 seed */
    char seed[80], pub[80];
} nk_t;

static bool nk_make(nk_t *k, unsigned prefix)
{
    unsigned char b[36];
    b[0] = (unsigned char)((18u << 3) | (prefix >> 5));
    b[1] = (unsigned char)((prefix & 31) << 3);
    if (RAND_bytes(k->raw, 32) != 1)
        return false;
    memcpy(b + 2, k->raw, 32);
    unsigned crc = nkey_crc16(b, 34);
    b[34] = (unsigned char)(crc & 0xff);
    b[35] = (unsigned char)(crc >> 8);
    char why[128];
    return nkey_base32_encode(b, sizeof b, k->seed, sizeof k->seed) == 58 &&
           nkey_public_from_seed(k->seed, k->pub, sizeof k->pub, why, sizeof why) == 0;
}

static void b64url(const unsigned char *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *c = out; *c; c++)
        *c = *c == '+' ? '-' : *c == '/' ? '_' : *c;
}

/* header.claims.signature, signed by the issuer's key. */
static bool jwt(const nk_t *issuer, const char *claims, char *out, size_t outlen)
{
    static const char hdr[] = "{\"typ\":\"JWT\",\"alg\":\"ed25519-nkey\"}";
    char h[128], c[2048];
    b64url((const unsigned char *)hdr, strlen(hdr), h);
    b64url((const unsigned char *)claims, strlen(claims), c);
    char signing[2300];
    snprintf(signing, sizeof signing, "%s.%s", h, c);
    unsigned char sig[64];
    size_t siglen = sizeof sig;
    EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, issuer->raw, 32);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = pk && md && EVP_DigestSignInit(md, NULL, NULL, NULL, pk) == 1 &&
              EVP_DigestSign(md, sig, &siglen, (const unsigned char *)signing, strlen(signing)) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    if (!ok)
        return false;
    char s[128];
    b64url(sig, siglen, s);
    return (size_t)snprintf(out, outlen, "%s.%s", signing, s) < outlen;
}

TEST(credentials_file_with_a_user_jwt_authenticates_against_an_operator_mode_server)
{
    atexit(it_dump_log);
    nk_t op, acc, sys, usr;
    REQUIRE(nk_make(&op, 14u << 3) && nk_make(&acc, 0) && nk_make(&sys, 0) && nk_make(&usr, 20u << 3));
    long now = (long)time(NULL);
    char claims[1500], op_jwt[2600], acc_jwt[2600], sys_jwt[2600], usr_jwt[2600];
    snprintf(claims, sizeof claims,
             "{\"jti\":\"OPJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"mes-op\",\"sub\":\"%s\","
             "\"nats\":{\"type\":\"operator\",\"version\":2}}",
             now, now, op.pub, op.pub);
    REQUIRE(jwt(&op, claims, op_jwt, sizeof op_jwt));
    snprintf(claims, sizeof claims,
             "{\"jti\":\"ACJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"mes-acc\",\"sub\":\"%s\","
             "\"nats\":{\"limits\":{\"subs\":-1,\"data\":-1,\"payload\":-1,\"imports\":-1,\"exports\":-1,"
             "\"wildcards\":true,\"conn\":-1,\"leaf\":-1,\"mem_storage\":-1,\"disk_storage\":-1,\"streams\":-1,"
             "\"consumer\":-1},\"default_permissions\":{\"pub\":{},\"sub\":{}},\"type\":\"account\",\"version\":2}}",
             now, now, op.pub, acc.pub);
    REQUIRE(jwt(&op, claims, acc_jwt, sizeof acc_jwt));
    /* JetStream in operator mode needs a system account. */
    snprintf(claims, sizeof claims,
             "{\"jti\":\"SYJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"SYS\",\"sub\":\"%s\","
             "\"nats\":{\"limits\":{\"subs\":-1,\"data\":-1,\"payload\":-1,\"imports\":-1,\"exports\":-1,"
             "\"wildcards\":true,\"conn\":-1,\"leaf\":-1},\"type\":\"account\",\"version\":2}}",
             now, now, op.pub, sys.pub);
    REQUIRE(jwt(&op, claims, sys_jwt, sizeof sys_jwt));
    snprintf(claims, sizeof claims,
             "{\"jti\":\"USJTI%ld\",\"iat\":%ld,\"iss\":\"%s\",\"name\":\"mes-user\",\"sub\":\"%s\","
             "\"nats\":{\"pub\":{},\"sub\":{},\"subs\":-1,\"data\":-1,\"payload\":-1,\"type\":\"user\",\"version\":2}}",
             now, now, acc.pub, usr.pub);
    REQUIRE(jwt(&acc, claims, usr_jwt, sizeof usr_jwt));

    REQUIRE(h_tmpdir(dir, sizeof dir));
    char op_path[320], creds[320];
    snprintf(op_path, sizeof op_path, "%s/op.jwt", dir);
    snprintf(creds, sizeof creds, "%s/user.creds", dir);
    FILE *f = fopen(op_path, "w");
    REQUIRE(f);
    fprintf(f, "%s\n", op_jwt);
    fclose(f);
    f = fopen(creds, "w");
    REQUIRE(f);
    fprintf(f,
            "-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n",
            usr_jwt, usr.seed);
    fclose(f);
    chmod(creds, 0600);

    REQUIRE(h_pg_start(&P));
    static char conf[8000];
    snprintf(conf, sizeof conf,
             "operator: \"%s\"\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: {\n  %s: \"%s\"\n"
             "  %s: \"%s\"\n}\n",
             op_path, sys.pub, acc.pub, acc_jwt, sys.pub, sys_jwt);
    REQUIRE(h_nats_start_conf(&N, 0, conf, H_NATS_WAIT_LOG));
    char env_creds[340];
    snprintf(env_creds, sizeof env_creds, "NATS_CREDSFILE=%s", creds);
    const char *env[] = {env_creds, NULL};
    REQUIRE(svc(env, true, NULL));
    ready_200();
    CHECK(!log_has(usr.seed));
    CHECK_EQ_INT(h_svc_signal(&S, SIGTERM, 20000), 0);
}
