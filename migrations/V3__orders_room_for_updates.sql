-- An order is written when it is accepted and changed again when it trades
-- as a maker, is cancelled or amended. COPY fills each heap page of orders
-- to the brim, so each change had to put the new row version on another
-- page and therefore a new entry into each of the table's three indexes.
-- With room left on each page, most changes stay on the page (a HOT
-- update: no index is touched, since no indexed column changes). Applies
-- to pages written from now on.
ALTER TABLE orders SET (fillfactor = 80);
