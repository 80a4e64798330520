/* The pure parts of configure's config: (configure/config.c): passwd/group lookups, owners,
 * the /etc/hosts line, and the chained keys that record run: steps. */
#include "configure/internal.h"
#include "tap.h"

static const char passwd[] = "root:x:0:0:root:/root:/bin/bash\n"
                             "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
                             "admin:x:1000:1000:,,,:/home/admin:/bin/bash\n"
                             "adm:x:1001:4::/home/adm:/bin/sh\n";
static const char group[] = "root:x:0:\n"
                            "adm:x:4:admin\n"
                            "sudo:x:27:admin,other\n"
                            "admin:x:1000:\n"
                            "deploy:x:2000:\n";

static void test_fields(void)
{
	_cleanup_free_ char *home = config_db_field(passwd, "admin", 5);
	is_str(home, "/home/admin", "field 5 of admin is its home");
	_cleanup_free_ char *shell = config_db_field(passwd, "adm", 6);
	is_str(shell, "/bin/sh", "adm is not taken for admin, nor admin for adm");
	_cleanup_free_ char *none = config_db_field(passwd, "ad", 0);
	ok(none == NULL, "a prefix of a name matches nothing");
	_cleanup_free_ char *empty = config_db_field(group, "deploy", 3);
	is_str(empty, "", "an empty member list is an empty field");
	_cleanup_free_ char *past = config_db_field(group, "deploy", 4);
	ok(past == NULL, "a field past the end is NULL");
	ok(config_group_has_member(group, "sudo", "admin"), "admin is in sudo");
	ok(config_group_has_member(group, "sudo", "other"), "other is in sudo (last member)");
	ok(!config_group_has_member(group, "sudo", "adm"), "adm is not in sudo");
	ok(!config_group_has_member(group, "deploy", "admin"), "deploy has no members");
	ok(!config_group_has_member(group, "nogroup", "admin"), "a missing group has no members");
}

static void test_owner(void)
{
	uid_t u = 99;
	gid_t g = 99;
	struct mosaic_error err = {0};
	ok(config_owner_resolve("admin", passwd, group, &u, &g, &err) == 0 && u == 1000 &&
	       g == 1000,
	   "'admin' is the user and its primary group");
	ok(config_owner_resolve("admin:deploy", passwd, group, &u, &g, &err) == 0 && u == 1000 &&
	       g == 2000,
	   "'admin:deploy' takes the group named");
	ok(config_owner_resolve("0:27", passwd, group, &u, &g, &err) == 0 && u == 0 && g == 27,
	   "numbers are taken as they are");
	ok(config_owner_resolve("daemon:adm", passwd, group, &u, &g, &err) == 0 && u == 1 && g == 4,
	   "daemon:adm");
	ok(config_owner_resolve("nobody", passwd, group, &u, &g, &err) == -ENOENT,
	   "an unknown user is ENOENT");
	is_str(err.msg, "owner 'nobody': no user 'nobody' in the composition's /etc/passwd",
	       "and the message names it and the file");
	ok(config_owner_resolve("admin:wheel", passwd, group, &u, &g, &err) == -ENOENT,
	   "an unknown group is ENOENT");
	is_str(err.msg, "owner 'admin:wheel': no group 'wheel' in the composition's /etc/group",
	       "and the message names it");
	ok(config_owner_resolve("1234", passwd, group, &u, &g, &err) == -ENOENT,
	   "a bare number that is no account has no group to take");
}

static void test_hosts(void)
{
	_cleanup_free_ char *fresh = config_hosts_text(NULL, "web1");
	ok(strncmp(fresh, "127.0.0.1\tlocalhost\n127.0.1.1\tweb1\n", 35) == 0,
	   "no /etc/hosts: localhost, then the host");
	_cleanup_free_ char *added =
	    config_hosts_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n", "web1.example.org");
	is_str(added, "127.0.0.1\tlocalhost\n127.0.1.1\tweb1.example.org\tweb1\n::1\tlocalhost\n",
	       "the line goes after 127.0.0.1, with the short name after a dotted one");
	_cleanup_free_ char *replaced =
	    config_hosts_text("# c\n127.0.0.1 localhost\n127.0.1.1 old\n::1 x\n", "new");
	is_str(replaced, "# c\n127.0.0.1 localhost\n127.0.1.1\tnew\n::1 x\n",
	       "an existing 127.0.1.1 line is replaced where it is");
	_cleanup_free_ char *again = config_hosts_text(replaced, "new");
	is_str(again, replaced, "applied twice, the text stays the same");
	_cleanup_free_ char *bare = config_hosts_text("10.0.0.1 db", "h");
	is_str(bare, "127.0.1.1\th\n10.0.0.1 db\n",
	       "without a 127.0.0.1 line it goes first, and a last line gets its newline");
}

static void test_run_keys(void)
{
	char a[SHA256_HEX_LEN + 1], b[SHA256_HEX_LEN + 1], b2[SHA256_HEX_LEN + 1],
	    c[SHA256_HEX_LEN + 1], c2[SHA256_HEX_LEN + 1];
	config_run_key("", "echo one", a);
	config_run_key(a, "echo two", b);
	config_run_key(a, "echo two", b2);
	ok(strcmp(b, b2) == 0 && is_sha256_hex(b), "the same steps give the same keys");
	config_run_key(b, "echo three", c);
	config_run_key("", "echo two", b2);
	ok(strcmp(b, b2) != 0, "the same command at another place gets another key");
	char a2[SHA256_HEX_LEN + 1];
	config_run_key("", "echo ONE", a2);
	config_run_key(a2, "echo two", b2);
	config_run_key(b2, "echo three", c2);
	ok(strcmp(c, c2) != 0, "a changed step changes the keys of every step after it");
}

int main(void)
{
	test_fields();
	test_owner();
	test_hosts();
	test_run_keys();
	return done();
}
