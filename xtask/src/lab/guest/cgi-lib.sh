# Shared by the CGI scripts of the lab guest's web server (busybox httpd).
# The data store is /data/store.txt: one item a line, `id|name|category|price|stock`.
STORE=/data/store.txt
ORDERS=/data/orders.log

# Value of a query-string parameter, reduced to [A-Za-z0-9_-].
qs() {
    echo "$QUERY_STRING" | tr '&' '\n' | sed -n "s/^$1=//p" | head -n 1 | tr -cd 'A-Za-z0-9_-'
}

header() {
    printf 'Content-Type: text/html\r\n\r\n'
    printf '<html><head><title>%s</title></head><body><h1>%s</h1>\n' "$1" "$1"
}

footer() {
    printf '</body></html>\n'
}

# Rows of the store as an HTML table.
table() {
    echo '<table><tr><th>id</th><th>name</th><th>category</th><th>price</th><th>stock</th></tr>'
    awk -F'|' '{ printf "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>\n", $1, $2, $3, $4, $5 }'
    echo '</table>'
}
