-- Blog endpoint "list posts": 20 newest posts with author and comment count
-- (the tutorial's JOIN + GROUP BY page; same text as the harness's blog_feed).
SELECT p.id, p.title, u.name AS author, count(c.id) AS comment_count
FROM posts p
JOIN users u ON u.id = p.author_id
LEFT JOIN comments c ON c.post_id = p.id
GROUP BY p.id, u.name
ORDER BY p.created_at DESC
LIMIT 20;
